/* upstream_h1.c — the upstream backend for cleartext http:// upstreams, on h2o 2.2.5's own
 * HTTP/1.1 client (<h2o/http1client.h>) and socket pool (<h2o/socketpool.h>), as h2o's
 * reverse proxy uses them. It exists for speed: curl costs several times more CPU per
 * request on the relay's hot path.
 *
 * How it works:
 *   - Each worker keeps one h2o_socketpool_t per upstream host:port (at most
 *     UPSTREAM_H1_MAX_POOLS; more hosts go to curl), whose idle keep-alive connections
 *     expire after UPSTREAM_H1_POOL_IDLE_MS. h2o 2.2.5 ignores a pool's capacity, so the
 *     number of idle connections is bounded here: a connection that finishes while
 *     UPSTREAM_H1_MAX_IDLE are already idle is closed instead of pooled.
 *   - A request is one allocation: the upstream struct followed by the request head
 *     (request line + headers, Authorization included), which is wiped when freed. The
 *     body is the caller's buffer, written without a copy.
 *   - h2o returns a connection to the pool only when the response was read completely and
 *     the server allows keep-alive; a cancelled or failed transfer closes it.
 *   - h2o leaves received body bytes in the socket's input buffer. They are delivered
 *     from there and wiped; when `writable` says no, reading stops and the bytes stay in
 *     the buffer until upstream_resume. When the response ends, the buffer is detached
 *     from the socket (h2o would discard it when pooling the socket) and its remaining
 *     bytes are delivered before on_done.
 *   - Callbacks never run inside upstream_h1_start: a pooled connection is handed over
 *     synchronously, so on_sent (and any error found there) is deferred to the loop's
 *     zero timeout. upstream_resume delivers held bytes synchronously, but an on_done it
 *     would cause is deferred the same way.
 *   - Timeouts: the connect timeout is ours (h2o's client would use its I/O timeout); the
 *     client's I/O timeout is set past both the relay's first-byte and idle timeouts, which
 *     the relay enforces itself.
 *   - A request that fails on a reused connection before any answer (the upstream closed
 *     it while idle) is sent again once on another connection, as curl does. */
#include "node/upstream_h1.h"

#include <assert.h>
#include <errno.h>
#include <h2o.h>
#include <h2o/http1client.h>
#include <h2o/socketpool.h>
#include <stdlib.h>
#include <string.h>

#include "node/upstream_impl.h"
#include "node/wipe.h"

#define H1_MAX_HOST 255
#define H1_USER_AGENT "llmrelay/" LLMRELAY_VERSION

typedef struct h1_pool {
    h2o_socketpool_t sockpool;
    size_t active; /* upstreams whose h2o client (connecting or connected) uses this pool */
    uint16_t port;
    size_t host_len;
    char host[H1_MAX_HOST + 1];
} h1_pool_t;

typedef struct h1_worker {
    h2o_loop_t *loop;
    h2o_timeout_t *zero_timeout; /* the h2o context's: fires on the next loop iteration */
    h2o_http1client_ctx_t client_ctx;
    h2o_timeout_t io_timeout;
    h2o_timeout_t connect_timeout;
    h1_pool_t *pools[UPSTREAM_H1_MAX_POOLS]; /* owned */
    size_t n_pools;
    size_t last_pool;
    size_t inflight;
    struct h1_upstream *connecting; /* whose connect call is on the stack (a pooled socket answers at once) */
    uv_idle_t reaper;               /* frees this struct after dispose, once libuv closed the timers */
    int reaper_runs;
} h1_worker_t;

typedef struct h1_upstream {
    upstream_t super;
    h1_worker_t *hw;
    h1_pool_t *pool;
    h2o_http1client_t *client; /* NULL once h2o is done with it */
    const upstream_cbs_t *cbs;
    void *data;
    h2o_timeout_entry_t connect_entry;
    h2o_timeout_entry_t defer_entry;
    h2o_socket_cb reader; /* h2o's body reader, kept while reading is stopped */
    h2o_buffer_t *rest;   /* after the response ended: its bytes not delivered yet (owned) */
    int end_error;
    bool in_start, in_resume; /* no on_done now: deferred to the loop */
    bool sent, sent_pending, reused, retried, chunked, paused, ended;
    h2o_iovec_t reqbufs[2];
    size_t reqbufcnt;
    size_t head_len;
    char head[]; /* the request head; holds the API key */
} h1_upstream_t;

static void h1_resume(upstream_t *super);
static void h1_cancel(upstream_t *super);
static const upstream_vtable_t h1_vtable = {"h1", h1_resume, h1_cancel};

static h2o_http1client_head_cb on_connect(h2o_http1client_t *client, const char *errstr, h2o_iovec_t **reqbufs,
                                          size_t *reqbufcnt, int *method_is_head);

/* ---- buffers ------------------------------------------------------------------------ */

/* Zeroes all the memory of an h2o buffer (not only the bytes in use). */
static void h1_buffer_wipe(h2o_buffer_t *b)
{
    if (b->bytes == NULL)
        return; /* the prototype's empty buffer */
    if (b->_fd == -1)
        explicit_bzero(b->_buf, b->capacity);
    else
        explicit_bzero(b->bytes, b->size);
}

static void h1_buffer_release(h2o_buffer_t **b)
{
    h1_buffer_wipe(*b);
    h2o_buffer_dispose(b);
}

/* ---- worker state ------------------------------------------------------------------- */

int upstream_h1_worker_init(worker_t *w)
{
    if (w->upstream_h1 != NULL)
        return 0;
    h1_worker_t *hw = calloc(1, sizeof(*hw));
    if (hw == NULL)
        return -ENOMEM;
    uint64_t connect_ms = 10000, first_byte_ms = 600000, idle_ms = 300000;
    if (w->server != NULL && w->server->cfg != NULL) {
        connect_ms = w->server->cfg->upstream_connect_timeout_ms;
        first_byte_ms = w->server->cfg->upstream_first_byte_timeout_ms;
        idle_ms = w->server->cfg->upstream_idle_timeout_ms;
    }
    /* The relay enforces the first-byte and idle timeouts; h2o's single I/O timeout covers
     * both phases, so it must not fire before either. */
    uint64_t io_ms = (first_byte_ms > idle_ms ? first_byte_ms : idle_ms) + 1000;
    hw->loop = w->ctx.loop;
    hw->zero_timeout = &w->ctx.zero_timeout;
    h2o_timeout_init(hw->loop, &hw->io_timeout, io_ms);
    h2o_timeout_init(hw->loop, &hw->connect_timeout, connect_ms > 0 ? connect_ms : 1);
    hw->client_ctx.loop = hw->loop;
    hw->client_ctx.getaddr_receiver = &w->ctx.receivers.hostinfo_getaddr;
    hw->client_ctx.io_timeout = &hw->io_timeout;
    hw->client_ctx.websocket_timeout = NULL;
    hw->client_ctx.ssl_ctx = NULL;
    w->upstream_h1 = hw;
    return 0;
}

static void on_reaper_closed(uv_handle_t *handle)
{
    h1_worker_t *hw = handle->data;
    for (size_t i = 0; i < hw->n_pools; i++)
        free(hw->pools[i]);
    free(hw);
}

static void on_reaper(uv_idle_t *idle)
{
    h1_worker_t *hw = idle->data;
    /* Timers closed before the first run are gone once one full iteration has passed. */
    if (++hw->reaper_runs < 2)
        return;
    uv_idle_stop(idle);
    uv_close((uv_handle_t *)idle, on_reaper_closed);
}

void upstream_h1_worker_dispose(worker_t *w)
{
    h1_worker_t *hw = w->upstream_h1;
    if (hw == NULL)
        return;
    assert(hw->inflight == 0);
    w->upstream_h1 = NULL;
    for (size_t i = 0; i < hw->n_pools; i++)
        h2o_socketpool_dispose(&hw->pools[i]->sockpool);
    h2o_timeout_dispose(hw->loop, &hw->io_timeout);
    h2o_timeout_dispose(hw->loop, &hw->connect_timeout);
    uv_idle_init(hw->loop, &hw->reaper);
    hw->reaper.data = hw;
    uv_idle_start(&hw->reaper, on_reaper);
}

static h1_pool_t *h1_pool_get(h1_worker_t *hw, const char *host, size_t host_len, uint16_t port)
{
    h1_pool_t *p;
    if (hw->n_pools > 0) {
        p = hw->pools[hw->last_pool];
        if (p->port == port && p->host_len == host_len && memcmp(p->host, host, host_len) == 0)
            return p;
    }
    for (size_t i = 0; i < hw->n_pools; i++) {
        p = hw->pools[i];
        if (p->port == port && p->host_len == host_len && memcmp(p->host, host, host_len) == 0) {
            hw->last_pool = i;
            return p;
        }
    }
    if (hw->n_pools == UPSTREAM_H1_MAX_POOLS || host_len > H1_MAX_HOST)
        return NULL;
    if ((p = calloc(1, sizeof(*p))) == NULL)
        return NULL;
    p->port = port;
    p->host_len = host_len;
    memcpy(p->host, host, host_len);
    /* An IPv4 literal is used as is; a name is resolved by h2o's getaddr threads. */
    h2o_socketpool_init_by_hostport(&p->sockpool, h2o_iovec_init(p->host, host_len), port, 0, SIZE_MAX);
    h2o_socketpool_set_timeout(&p->sockpool, hw->loop, UPSTREAM_H1_POOL_IDLE_MS);
    hw->last_pool = hw->n_pools;
    hw->pools[hw->n_pools++] = p;
    return p;
}

/* False when the pool already keeps UPSTREAM_H1_MAX_IDLE idle connections. h2o's count
 * (idle + in use + connecting) can only over-estimate, so the list is walked only when
 * the count alone does not settle it. */
static bool h1_pool_has_idle_room(h1_pool_t *p)
{
    size_t count = __atomic_load_n(&p->sockpool._shared.count, __ATOMIC_RELAXED);
    if (count < p->active + UPSTREAM_H1_MAX_IDLE)
        return true;
    size_t idle = 0;
    for (h2o_linklist_t *l = p->sockpool._shared.sockets.next; l != &p->sockpool._shared.sockets; l = l->next)
        if (++idle >= UPSTREAM_H1_MAX_IDLE)
            return false;
    return true;
}

/* ---- one request -------------------------------------------------------------------- */

static int h1_connect_error(const char *errstr)
{
    if (strcmp(errstr, "connection timeout") == 0)
        return -ETIMEDOUT;
    if (strcmp(errstr, "connection failed") == 0 || strcmp(errstr, "failed to connect to host") == 0 ||
        strcmp(errstr, "socket create error") == 0)
        return -ECONNREFUSED;
    return -EHOSTUNREACH; /* name resolution failed */
}

static int h1_response_error(const char *errstr)
{
    if (strcmp(errstr, "I/O timeout") == 0)
        return -ETIMEDOUT;
    if (strncmp(errstr, "I/O error", 9) == 0)
        return -EIO;
    return -EPROTO; /* unparsable head, bad chunked encoding, unknown transfer-encoding */
}

static void h1_free(h1_upstream_t *u)
{
    assert(u->client == NULL);
    if (h2o_timeout_is_linked(&u->connect_entry))
        h2o_timeout_unlink(&u->connect_entry);
    if (h2o_timeout_is_linked(&u->defer_entry))
        h2o_timeout_unlink(&u->defer_entry);
    if (u->rest != NULL)
        h1_buffer_release(&u->rest);
    u->hw->inflight--;
    wipe_free(u);
}

static void h1_finish(h1_upstream_t *u, int error)
{
    const upstream_cbs_t *cbs = u->cbs;
    void *data = u->data;
    h1_free(u);
    cbs->on_done(data, error);
}

/* h2o is done with (or is about to free) u's client. */
static void h1_client_gone(h1_upstream_t *u)
{
    u->client = NULL;
    u->pool->active--;
}

static void h1_defer(h1_upstream_t *u)
{
    if (!h2o_timeout_is_linked(&u->defer_entry))
        h2o_timeout_link(u->hw->loop, u->hw->zero_timeout, &u->defer_entry);
}

static void h1_flush_sent(h1_upstream_t *u)
{
    if (!u->sent_pending)
        return;
    u->sent_pending = false;
    if (h2o_timeout_is_linked(&u->defer_entry))
        h2o_timeout_unlink(&u->defer_entry);
    u->cbs->on_sent(u->data);
}

/* Delivers the bytes of *buf while the receiver is writable, wiping what was delivered.
 * 0: all delivered; 1: held (not writable); -1: on_body asked to stop. */
static int h1_deliver(h1_upstream_t *u, h2o_buffer_t **buf)
{
    while ((*buf)->size != 0) {
        if (u->cbs->writable != NULL && !u->cbs->writable(u->data))
            return 1;
        size_t n = (*buf)->size;
        int ret = u->cbs->on_body(u->data, (const uint8_t *)(*buf)->bytes, n);
        h1_buffer_wipe(*buf); /* everything is consumed, and a consumed buffer is freed unwiped */
        h2o_buffer_consume(buf, n);
        if (ret != 0)
            return -1;
    }
    return 0;
}

/* After the response ended: delivers what is left, then on_done. */
static void h1_flush_rest(h1_upstream_t *u)
{
    if (u->rest != NULL) {
        int ret = h1_deliver(u, &u->rest);
        if (ret > 0) {
            u->paused = true;
            return;
        }
        if (ret < 0) {
            u->end_error = -ECANCELED;
            h1_buffer_release(&u->rest);
        }
    }
    if (u->in_resume) {
        h1_defer(u);
        return;
    }
    h1_finish(u, u->end_error);
}

/* The transfer is over on the network side (u->client is NULL). */
static void h1_end(h1_upstream_t *u, int error)
{
    u->ended = true;
    u->end_error = error;
    if (u->in_start || u->in_resume) {
        h1_defer(u);
        return;
    }
    h1_flush_rest(u);
}

static void on_deferred(h2o_timeout_entry_t *entry)
{
    h1_upstream_t *u = H2O_STRUCT_FROM_MEMBER(h1_upstream_t, defer_entry, entry);
    h1_flush_sent(u);
    if (u->ended)
        h1_flush_rest(u);
}

static void on_connect_timeout(h2o_timeout_entry_t *entry)
{
    h1_upstream_t *u = H2O_STRUCT_FROM_MEMBER(h1_upstream_t, connect_entry, entry);
    h2o_http1client_cancel(u->client);
    h1_client_gone(u);
    h1_end(u, -ETIMEDOUT);
}

/* Asks the pool for a connection; u may be freed on return if it failed at once and
 * callbacks are allowed (not inside upstream_h1_start). */
static void h1_connect(h1_upstream_t *u)
{
    h1_worker_t *hw = u->hw;
    u->pool->active++;
    h2o_timeout_link(hw->loop, &hw->connect_timeout, &u->connect_entry);
    hw->connecting = u;
    h2o_http1client_connect_with_pool(&u->client, u, &hw->client_ctx, &u->pool->sockpool, on_connect);
    hw->connecting = NULL;
}

static int on_body(h2o_http1client_t *client, const char *errstr)
{
    h1_upstream_t *u = client->data;
    h2o_socket_t *sock = client->sock;

    if (errstr != NULL) {
        int error = 0;
        if (errstr != h2o_http1client_error_is_eos)
            error = h1_response_error(errstr);
        else if (u->chunked && sock->bytes_read == 0)
            error = -EIO; /* h2o takes a close between chunks for the end; the last chunk never came */
        /* h2o discards the socket's input when it pools the socket: keep it. */
        u->rest = sock->input;
        h2o_buffer_init(&sock->input, &h2o_socket_buffer_prototype);
        if (error == 0 && !h1_pool_has_idle_room(u->pool)) {
            h2o_socket_t *stolen = h2o_http1client_steal_socket(client);
            h2o_socket_close(stolen);
        }
        h1_client_gone(u);
        h1_end(u, error);
        return 0;
    }

    int ret = h1_deliver(u, &sock->input);
    if (ret > 0) {
        /* Hold: stop reading; what was read stays in sock->input until upstream_resume. */
        u->reader = sock->_cb.read;
        h2o_socket_read_stop(sock);
        u->paused = true;
        return 0;
    }
    if (ret < 0) {
        h1_buffer_wipe(sock->input);
        h1_client_gone(u); /* h2o closes the connection when we return non-zero */
        h1_finish(u, -ECANCELED);
        return -1;
    }
    return 0;
}

static h2o_http1client_body_cb on_head(h2o_http1client_t *client, const char *errstr, int minor_version, int status,
                                       h2o_iovec_t msg, struct st_h2o_header_t *headers, size_t num_headers, int rlen)
{
    h1_upstream_t *u = client->data;
    (void)minor_version;
    (void)msg;
    (void)rlen;

    if (errstr != NULL && errstr != h2o_http1client_error_is_eos) {
        h1_client_gone(u); /* h2o closes the connection after we return */
        if (u->reused && !u->retried && strncmp(errstr, "I/O error", 9) == 0) {
            /* A pooled connection the upstream had closed: send once more. */
            u->retried = true;
            h1_connect(u);
            return NULL;
        }
        h1_end(u, h1_response_error(errstr));
        return NULL;
    }

    h1_flush_sent(u);
    const char *content_type = NULL;
    size_t content_type_len = 0;
    for (size_t i = 0; i < num_headers; i++) {
        if (headers[i].name == &H2O_TOKEN_CONTENT_TYPE->buf) {
            content_type = headers[i].value.base;
            content_type_len = headers[i].value.len;
        } else if (headers[i].name == &H2O_TOKEN_TRANSFER_ENCODING->buf) {
            u->chunked = h2o_memis(headers[i].value.base, headers[i].value.len, H2O_STRLIT("chunked"));
        }
    }
    u->cbs->on_head(u->data, status, content_type, content_type_len);

    if (errstr == h2o_http1client_error_is_eos) {
        /* No body (204, 304): h2o pools or closes the connection after we return. */
        if (!h1_pool_has_idle_room(u->pool))
            h2o_socket_close(h2o_http1client_steal_socket(client));
        h1_client_gone(u);
        h1_end(u, 0);
        return NULL;
    }
    return on_body;
}

static h2o_http1client_head_cb on_connect(h2o_http1client_t *client, const char *errstr, h2o_iovec_t **reqbufs,
                                          size_t *reqbufcnt, int *method_is_head)
{
    h1_upstream_t *u = client->data;
    bool synchronous = u->hw->connecting == u; /* only a pooled connection comes back at once */

    if (h2o_timeout_is_linked(&u->connect_entry))
        h2o_timeout_unlink(&u->connect_entry);
    if (errstr != NULL) {
        h1_client_gone(u); /* h2o frees the client after we return */
        h1_end(u, h1_connect_error(errstr));
        return NULL;
    }
    u->reused = synchronous;
    *reqbufs = u->reqbufs;
    *reqbufcnt = u->reqbufcnt;
    *method_is_head = 0;
    if (!u->sent) {
        u->sent = true;
        if (u->in_start) {
            u->sent_pending = true;
            h1_defer(u);
        } else {
            u->cbs->on_sent(u->data);
        }
    }
    return on_head;
}

/* Delivers held bytes synchronously; on_done, if the response is over, comes from the loop. */
static void h1_resume(upstream_t *super)
{
    h1_upstream_t *u = (h1_upstream_t *)super;
    if (!u->paused)
        return;
    u->paused = false;
    u->in_resume = true;
    if (u->ended) {
        h1_flush_rest(u);
    } else {
        h2o_socket_t *sock = u->client->sock;
        int ret = h1_deliver(u, &sock->input);
        if (ret > 0) {
            u->paused = true;
        } else if (ret < 0) {
            h1_buffer_wipe(sock->input);
            h2o_http1client_cancel(u->client);
            h1_client_gone(u);
            h1_end(u, -ECANCELED);
        } else {
            h2o_socket_read_start(sock, u->reader);
        }
    }
    u->in_resume = false; /* u is never freed inside resume: every end is deferred */
}

static void h1_cancel(upstream_t *super)
{
    h1_upstream_t *u = (h1_upstream_t *)super;
    if (u->client != NULL) {
        /* A response may be in flight: the connection is closed, never pooled. */
        if (u->client->sock != NULL)
            h1_buffer_wipe(u->client->sock->input);
        h2o_http1client_cancel(u->client);
        h1_client_gone(u);
    }
    h1_free(u);
}

/* ---- request head ------------------------------------------------------------------- */

/* Visible ASCII and spaces only: nothing that could end a header line early. */
static bool h1_header_safe(const char *s, size_t len, bool allow_space)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || (c == ' ' && !allow_space))
            return false;
    }
    return true;
}

#define H1_PUT(p, s, n)                                                                                                \
    do {                                                                                                               \
        memcpy((p), (s), (n));                                                                                         \
        (p) += (n);                                                                                                    \
    } while (0)
#define H1_PUT_LIT(p, lit) H1_PUT(p, lit, sizeof(lit) - 1)

static size_t h1_format_size(char *out, size_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

int upstream_h1_start(struct worker *w, const upstream_request_t *req, const upstream_cbs_t *cbs, void *data,
                      upstream_t **out)
{
    h2o_url_t url;
    if (req == NULL || req->url == NULL || cbs == NULL || cbs->on_body == NULL || cbs->on_done == NULL ||
        cbs->on_head == NULL || cbs->on_sent == NULL || out == NULL || (req->body == NULL && req->body_len > 0))
        return -EINVAL;
    /* What h2o cannot parse (user info, odd forms) is left to curl. */
    if (h2o_url_parse(req->url, strlen(req->url), &url) != 0 || url.scheme != &H2O_URL_SCHEME_HTTP ||
        url.host.len == 0 || url.host.len > H1_MAX_HOST)
        return -ENOTSUP;
    if (!h1_header_safe(url.path.base, url.path.len, false) ||
        !h1_header_safe(url.authority.base, url.authority.len, false))
        return -EINVAL;
    size_t key_len = req->api_key != NULL ? strlen(req->api_key) : 0;
    if (!h1_header_safe(req->api_key, key_len, false))
        return -EINVAL;

    if (w->upstream_h1 == NULL) {
        int err = upstream_h1_worker_init(w);
        if (err != 0)
            return err;
    }
    h1_worker_t *hw = w->upstream_h1;
    h1_pool_t *pool = h1_pool_get(hw, url.host.base, url.host.len, h2o_url_get_port(&url));
    if (pool == NULL)
        return -ENOTSUP; /* pool table full: curl serves this host */

    static const char accept_sse[] = "text/event-stream", accept_json[] = "application/json";
    const char *accept = req->stream ? accept_sse : accept_json;
    size_t accept_len = req->stream ? sizeof(accept_sse) - 1 : sizeof(accept_json) - 1;
    size_t head_cap = sizeof("POST  HTTP/1.1\r\nHost: \r\n") - 1 + url.path.len + url.authority.len +
                      (key_len > 0 ? sizeof("Authorization: Bearer \r\n") - 1 + key_len : 0) +
                      sizeof("Content-Type: application/json\r\nAccept: \r\n") - 1 + accept_len +
                      sizeof("Content-Length: \r\n") - 1 + 20 + sizeof("User-Agent: " H1_USER_AGENT "\r\n\r\n") - 1;

    h1_upstream_t *u = malloc(sizeof(*u) + head_cap);
    if (u == NULL)
        return -ENOMEM;
    memset(u, 0, sizeof(*u));
    u->super.vt = &h1_vtable;
    u->hw = hw;
    u->pool = pool;
    u->cbs = cbs;
    u->data = data;
    u->connect_entry.cb = on_connect_timeout;
    u->defer_entry.cb = on_deferred;

    char *p = u->head;
    H1_PUT_LIT(p, "POST ");
    H1_PUT(p, url.path.base, url.path.len);
    H1_PUT_LIT(p, " HTTP/1.1\r\nHost: ");
    H1_PUT(p, url.authority.base, url.authority.len);
    H1_PUT_LIT(p, "\r\n");
    if (key_len > 0) {
        H1_PUT_LIT(p, "Authorization: Bearer ");
        H1_PUT(p, req->api_key, key_len);
        H1_PUT_LIT(p, "\r\n");
    }
    H1_PUT_LIT(p, "Content-Type: application/json\r\nAccept: ");
    H1_PUT(p, accept, accept_len);
    H1_PUT_LIT(p, "\r\nContent-Length: ");
    p += h1_format_size(p, req->body_len);
    H1_PUT_LIT(p, "\r\nUser-Agent: " H1_USER_AGENT "\r\n\r\n");
    u->head_len = (size_t)(p - u->head);
    assert(u->head_len <= head_cap);

    u->reqbufs[0] = h2o_iovec_init(u->head, u->head_len);
    u->reqbufcnt = 1;
    if (req->body_len > 0)
        u->reqbufs[u->reqbufcnt++] = h2o_iovec_init(req->body, req->body_len);

    hw->inflight++;
    u->in_start = true;
    h1_connect(u);
    u->in_start = false;
    *out = &u->super;
    return 0;
}
