/* upstream_h1.c — the upstream backend for cleartext http:// upstreams: HTTP/1.1 over raw
 * libuv TCP handles, with per-worker keep-alive pools of its own. It exists for speed: curl
 * costs several times more CPU per request, and h2o's libuv socket pool exports and
 * re-imports a socket (dup, close, a new epoll registration, a liveness peek) every time
 * a connection goes back to the pool and out again.
 *
 * How it works:
 *   - A connection is one uv_tcp_t for its whole life, with a read buffer of its own
 *     (H1_READ_BUF bytes, part of the connection's single allocation). It keeps reading
 *     all the time, also while idle in the pool: an idle connection that sees any byte or
 *     EOF is dead and closed at once, so taking one out of the pool costs no syscall and no
 *     epoll change. A request costs one writev (uv_try_write of the request head and the
 *     caller's body as two buffers; uv_write only for what the socket did not take) and
 *     the reads of its answer.
 *   - Each worker keeps one pool per upstream host:port (at most UPSTREAM_H1_MAX_POOLS;
 *     more hosts go to curl). Idle connections are a list, most recently used first; at
 *     most UPSTREAM_H1_MAX_IDLE per pool; a sweep timer closes those idle for longer than
 *     UPSTREAM_H1_POOL_IDLE_MS (oldest at the tail). Idle connections do not keep the
 *     loop alive.
 *   - Names are resolved with uv_getaddrinfo, at most one lookup per pool at a time,
 *     cached for H1_DNS_TTL_MS; requests wait on the pool meanwhile. Numeric hosts skip it.
 *     A connect that fails tries the next address; the one that worked is tried first.
 *   - Responses are parsed with picohttpparser (exported by libh2o): the head in the
 *     connection's buffer (1xx interim answers skipped; a head that does not fit is
 *     -EPROTO), then the body by content-length, chunked encoding (decoded in place) or
 *     until EOF. Body bytes are handed to on_body straight from the read buffer. When
 *     `writable` says no, reading stops and the decoded bytes stay in the buffer until
 *     upstream_resume. The buffer's used part is wiped every time it has been consumed.
 *   - A connection goes back to the pool only when its response was read completely,
 *     delivered, with a known length, nothing after it, the whole request written, and
 *     keep-alive allowed (HTTP/1.1 without Connection: close). Everything else is closed.
 *   - A request is one allocation: the upstream struct followed by the request head
 *     (Authorization included), wiped when freed. The body is the caller's buffer.
 *   - Callbacks never run inside upstream_h1_start: a pooled connection is written at once,
 *     and on_sent (and any error found there) is deferred to a zero timer of the worker.
 *     upstream_resume delivers held bytes synchronously, but an on_done it would cause is
 *     deferred the same way.
 *   - Timeouts: only the connect timeout (one worker timer over the connecting list,
 *     which is in deadline order since every connect gets the same timeout). The relay
 *     enforces the first-byte and idle timeouts itself.
 *   - A request that fails on a reused connection before any response byte (the upstream
 *     closed it while idle) is sent again once, on a new connection, as curl does. */
#include "node/upstream_h1.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <h2o.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "node/compat/picohttpparser.h"
#include "node/upstream_impl.h"
#include "node/util.h"
#include "node/wipe.h"

#define H1_MAX_HOST 255
#define H1_USER_AGENT "llmrelay/" LLMRELAY_VERSION
/* A connection's read buffer: bounds the response head, and the bytes held under backpressure. */
#define H1_READ_BUF 16384
#define H1_MAX_HEADERS 100
#define H1_MAX_ADDRS 8
/* How long a name's addresses are used before the next connect looks them up again. */
#define H1_DNS_TTL_MS 5000
/* Idle connections are checked this often (expiry is precise to this much). */
#define H1_SWEEP_MS (UPSTREAM_H1_POOL_IDLE_MS / 4)

enum { H1_BODY_NONE, H1_BODY_LENGTH, H1_BODY_CHUNKED, H1_BODY_UNTIL_EOF };

typedef struct h1_worker h1_worker_t;
typedef struct h1_pool h1_pool_t;
typedef struct h1_conn h1_conn_t;
typedef struct h1_upstream h1_upstream_t;

typedef union h1_addr {
    struct sockaddr sa;
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
} h1_addr_t;

/* A name lookup in flight; outlives its pool if the worker is disposed meanwhile. */
typedef struct h1_lookup {
    uv_getaddrinfo_t req;
    h1_pool_t *pool; /* NULL once the pool is gone */
} h1_lookup_t;

struct h1_pool {
    h1_worker_t *hw;
    h2o_linklist_t idle; /* h1_conn_t.link, most recently used first */
    size_t n_idle;
    h2o_linklist_t waiting; /* h1_upstream_t.wait_link: requests waiting for the lookup */
    h1_lookup_t *lookup;    /* in flight, or NULL */
    h1_addr_t addrs[H1_MAX_ADDRS];
    size_t n_addrs;
    size_t preferred;         /* the address that connected last */
    uint64_t addrs_expire_ms; /* loop time; UINT64_MAX for a numeric host */
    uint16_t port;
    size_t host_len;
    char host[H1_MAX_HOST + 1];
};

struct h1_conn {
    uv_tcp_t tcp; /* tcp.data = this */
    uv_connect_t connect_req;
    uv_write_t write_req;
    h1_pool_t *pool;
    h1_upstream_t *u;    /* the request on this connection; NULL while idle or closing */
    h2o_linklist_t link; /* in pool->idle while idle, in hw->connecting while connecting */
    uint64_t since_ms;   /* connect deadline while connecting, idle since while idle */
    size_t addr_index;
    bool connecting, writing, reading, idle, closing;
    /* rbuf: [0, rpos) delivered, [rpos, dend) body bytes to deliver (decoded), [dend, rlen) not
     * decoded yet; rdirty: how far bytes were written since the last wipe. */
    size_t rpos, dend, rlen, rdirty;
    char rbuf[H1_READ_BUF];
};

struct h1_worker {
    uv_loop_t *loop;
    uint64_t connect_ms;
    h1_pool_t *pools[UPSTREAM_H1_MAX_POOLS]; /* owned */
    size_t n_pools;
    size_t last_pool;
    size_t inflight;
    size_t n_idle;             /* idle connections in all pools */
    h2o_linklist_t connecting; /* h1_conn_t.link, deadline order */
    h2o_linklist_t deferred;   /* h1_upstream_t.defer_link */
    uv_timer_t defer_timer, connect_timer, sweep_timer;
    int open_timers; /* after dispose: the struct is freed when the last one is closed */
};

struct h1_upstream {
    upstream_t super;
    h1_worker_t *hw;
    h1_pool_t *pool;
    h1_conn_t *conn; /* NULL while waiting for a lookup, and once the transfer is over */
    const upstream_cbs_t *cbs;
    void *data;
    h2o_linklist_t defer_link, wait_link;
    const uint8_t *body; /* borrowed */
    size_t body_len;
    struct phr_chunked_decoder chunked;
    uint64_t remaining; /* H1_BODY_LENGTH: bytes still to come */
    int body_mode;
    int body_error; /* the body turned out malformed: reported once the bytes before are delivered */
    int end_error;
    size_t addr_tries;
    bool in_start, in_resume; /* no on_done now: deferred to the loop */
    bool sent, sent_pending, reused, retried, head_done, keepalive, net_end, paused, ended;
    size_t head_len;
    char head[]; /* the request head; holds the API key */
};

static void h1_resume(upstream_t *super);
static void h1_cancel(upstream_t *super);
static const upstream_vtable_t h1_vtable = {"h1", h1_resume, h1_cancel};

static void h1_connect_new(h1_upstream_t *u);
static void on_conn_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void h1_connect_addr(h1_upstream_t *u, size_t index);

/* ---- connections ---------------------------------------------------------------------- */

static void on_conn_closed(uv_handle_t *handle)
{
    wipe_free(handle->data); /* the read buffer held response bytes */
}

/* Closes conn (never pooled again); its request, if any, loses it. */
static void h1_conn_close(h1_conn_t *conn)
{
    if (conn->closing)
        return;
    conn->closing = true;
    if (h2o_linklist_is_linked(&conn->link))
        h2o_linklist_unlink(&conn->link);
    if (conn->idle) {
        conn->idle = false;
        conn->pool->n_idle--;
        conn->pool->hw->n_idle--;
    }
    conn->connecting = false;
    if (conn->u != NULL) {
        conn->u->conn = NULL;
        conn->u = NULL;
    }
    uv_close((uv_handle_t *)&conn->tcp, on_conn_closed);
}

static void h1_conn_reset_buf(h1_conn_t *conn)
{
    wipe_bytes(conn->rbuf, conn->rdirty);
    conn->rpos = conn->dend = conn->rlen = conn->rdirty = 0;
}

static void on_conn_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    h1_conn_t *conn = handle->data;
    (void)suggested;
    *buf = uv_buf_init(conn->rbuf + conn->rlen, (unsigned)(H1_READ_BUF - conn->rlen));
}

static void on_sweep(uv_timer_t *timer)
{
    h1_worker_t *hw = timer->data;
    uint64_t now = uv_now(hw->loop);
    for (size_t i = 0; i < hw->n_pools; i++) {
        h1_pool_t *pool = hw->pools[i];
        while (!h2o_linklist_is_empty(&pool->idle)) {
            h1_conn_t *conn = H2O_STRUCT_FROM_MEMBER(h1_conn_t, link, pool->idle.prev);
            if (conn->since_ms + UPSTREAM_H1_POOL_IDLE_MS > now)
                break;
            h1_conn_close(conn);
        }
    }
    if (hw->n_idle == 0)
        uv_timer_stop(timer);
}

/* The request on conn is over. keep: the connection may serve another one. */
static void h1_conn_release(h1_conn_t *conn, bool keep)
{
    h1_pool_t *pool = conn->pool;
    h1_worker_t *hw = pool->hw;
    if (conn->u != NULL) {
        conn->u->conn = NULL;
        conn->u = NULL;
    }
    if (!keep || conn->closing || conn->writing || pool->n_idle >= UPSTREAM_H1_MAX_IDLE) {
        h1_conn_close(conn);
        return;
    }
    h1_conn_reset_buf(conn);
    if (!conn->reading) {
        if (uv_read_start((uv_stream_t *)&conn->tcp, on_conn_alloc, on_conn_read) != 0) {
            h1_conn_close(conn);
            return;
        }
        conn->reading = true;
    }
    conn->idle = true;
    conn->since_ms = uv_now(hw->loop);
    h2o_linklist_insert(pool->idle.next, &conn->link);
    pool->n_idle++;
    hw->n_idle++;
    uv_unref((uv_handle_t *)&conn->tcp);
    if (!uv_is_active((uv_handle_t *)&hw->sweep_timer))
        uv_timer_start(&hw->sweep_timer, on_sweep, H1_SWEEP_MS, H1_SWEEP_MS);
}

static h1_conn_t *h1_pool_take(h1_pool_t *pool)
{
    if (h2o_linklist_is_empty(&pool->idle))
        return NULL;
    h1_conn_t *conn = H2O_STRUCT_FROM_MEMBER(h1_conn_t, link, pool->idle.next);
    h2o_linklist_unlink(&conn->link);
    conn->idle = false;
    pool->n_idle--;
    pool->hw->n_idle--;
    uv_ref((uv_handle_t *)&conn->tcp);
    return conn;
}

/* ---- ending a request ----------------------------------------------------------------- */

static void on_deferred(uv_timer_t *timer);

static void h1_defer(h1_upstream_t *u)
{
    h1_worker_t *hw = u->hw;
    if (!h2o_linklist_is_linked(&u->defer_link))
        h2o_linklist_insert(&hw->deferred, &u->defer_link);
    if (!uv_is_active((uv_handle_t *)&hw->defer_timer))
        uv_timer_start(&hw->defer_timer, on_deferred, 0, 0);
}

static void h1_flush_sent(h1_upstream_t *u)
{
    if (!u->sent_pending)
        return;
    u->sent_pending = false;
    u->cbs->on_sent(u->data);
}

static void h1_free(h1_upstream_t *u)
{
    if (u->conn != NULL)
        h1_conn_close(u->conn); /* a response may be in flight: never pooled */
    if (h2o_linklist_is_linked(&u->defer_link))
        h2o_linklist_unlink(&u->defer_link);
    if (h2o_linklist_is_linked(&u->wait_link))
        h2o_linklist_unlink(&u->wait_link);
    u->hw->inflight--;
    wipe_free(u);
}

static void h1_finish(h1_upstream_t *u)
{
    h1_flush_sent(u);
    const upstream_cbs_t *cbs = u->cbs;
    void *data = u->data;
    int error = u->end_error;
    h1_free(u);
    cbs->on_done(data, error);
}

/* The transfer is over (u->conn released or closed); on_done now or from the loop. */
static void h1_end(h1_upstream_t *u, int error)
{
    assert(!u->ended);
    u->ended = true;
    u->end_error = error;
    if (u->in_start || u->in_resume)
        h1_defer(u);
    else
        h1_finish(u);
}

static void h1_fail(h1_upstream_t *u, int error)
{
    if (u->conn != NULL)
        h1_conn_close(u->conn);
    h1_end(u, error);
}

static void on_deferred(uv_timer_t *timer)
{
    h1_worker_t *hw = timer->data;
    while (!h2o_linklist_is_empty(&hw->deferred)) {
        h1_upstream_t *u = H2O_STRUCT_FROM_MEMBER(h1_upstream_t, defer_link, hw->deferred.next);
        h2o_linklist_unlink(&u->defer_link);
        h1_flush_sent(u);
        if (u->ended)
            h1_finish(u);
    }
}

/* ---- response ------------------------------------------------------------------------- */

static bool h1_token_in(const char *s, size_t len, const char *token, size_t token_len)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == ','))
            i++;
        size_t start = i;
        while (i < len && s[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (s[end - 1] == ' ' || s[end - 1] == '\t'))
            end--;
        if (end - start == token_len && strncasecmp(s + start, token, token_len) == 0)
            return true;
    }
    return false;
}

static bool h1_name_is(const struct phr_header *h, const char *name, size_t len)
{
    return h->name_len == len && strncasecmp(h->name, name, len) == 0;
}

#define H1_NAME_IS(h, lit) h1_name_is((h), lit, sizeof(lit) - 1)

/* Parses the response head at the start of the read buffer and calls on_head.
 * 0: done; 1: incomplete; -EPROTO. */
static int h1_parse_head(h1_upstream_t *u)
{
    h1_conn_t *conn = u->conn;
    struct phr_header headers[H1_MAX_HEADERS];
    size_t num_headers;
    int minor_version, status, head_len;
    const char *msg;
    size_t msg_len;
    for (;;) {
        num_headers = H1_MAX_HEADERS;
        head_len = phr_parse_response(conn->rbuf, conn->rlen, &minor_version, &status, &msg, &msg_len, headers,
                                      &num_headers, 0);
        if (head_len == -2)
            return conn->rlen == H1_READ_BUF ? -EPROTO : 1;
        if (head_len < 0 || status < 100 || status == 101)
            return -EPROTO;
        if (status >= 200)
            break;
        /* An interim answer (100 Continue, 103 Early Hints): the real one follows. */
        memmove(conn->rbuf, conn->rbuf + head_len, conn->rlen - (size_t)head_len);
        conn->rlen -= (size_t)head_len;
        if (conn->rlen == 0)
            return 1;
    }

    const char *content_type = NULL;
    size_t content_type_len = 0;
    bool has_length = false, chunked = false, has_te = false, conn_close = false, conn_keepalive = false;
    uint64_t length = 0;
    for (size_t i = 0; i < num_headers; i++) {
        const struct phr_header *h = &headers[i];
        if (h->name == NULL)
            continue; /* continuation line */
        if (H1_NAME_IS(h, "content-type")) {
            content_type = h->value;
            content_type_len = h->value_len;
        } else if (H1_NAME_IS(h, "content-length")) {
            uint64_t v = 0;
            if (h->value_len == 0 || h->value_len > 18)
                return -EPROTO;
            for (size_t k = 0; k < h->value_len; k++) {
                if (h->value[k] < '0' || h->value[k] > '9')
                    return -EPROTO;
                v = v * 10 + (uint64_t)(h->value[k] - '0');
            }
            if (has_length && v != length)
                return -EPROTO;
            has_length = true;
            length = v;
        } else if (H1_NAME_IS(h, "transfer-encoding")) {
            if (has_te || !(h->value_len == 7 && strncasecmp(h->value, "chunked", 7) == 0))
                return -EPROTO; /* a coding we would have to undo */
            has_te = chunked = true;
        } else if (H1_NAME_IS(h, "connection")) {
            if (h1_token_in(h->value, h->value_len, "close", 5))
                conn_close = true;
            if (h1_token_in(h->value, h->value_len, "keep-alive", 10))
                conn_keepalive = true;
        }
    }

    u->keepalive = !conn_close && (minor_version >= 1 || conn_keepalive);
    if (status == 204 || status == 304) {
        u->body_mode = H1_BODY_NONE;
    } else if (chunked) {
        u->body_mode = H1_BODY_CHUNKED;
        memset(&u->chunked, 0, sizeof(u->chunked));
        u->chunked.consume_trailer = 1;
        if (has_length)
            u->keepalive = false; /* both framings: do not trust what follows */
    } else if (has_length) {
        u->body_mode = length == 0 ? H1_BODY_NONE : H1_BODY_LENGTH;
        u->remaining = length;
    } else {
        u->body_mode = H1_BODY_UNTIL_EOF;
        u->keepalive = false;
    }
    u->head_done = true;
    conn->rpos = conn->dend = (size_t)head_len;
    if (u->body_mode == H1_BODY_NONE)
        u->net_end = true;
    u->cbs->on_head(u->data, status, content_type, content_type_len);
    return 0;
}

/* Decodes the bytes read since the last call: [dend, rlen) becomes body bytes up to dend.
 * -EPROTO: malformed; the bytes decoded before the fault are still up to dend. */
static int h1_decode(h1_upstream_t *u)
{
    h1_conn_t *conn = u->conn;
    size_t raw = conn->rlen - conn->dend;
    if (raw == 0)
        return 0;
    switch (u->body_mode) {
    case H1_BODY_LENGTH: {
        size_t take = raw < u->remaining ? raw : (size_t)u->remaining;
        conn->dend += take;
        u->remaining -= take;
        if (u->remaining == 0)
            u->net_end = true;
        break;
    }
    case H1_BODY_CHUNKED: {
        if (u->net_end)
            break;
        size_t size = raw;
        ssize_t ret = phr_decode_chunked(&u->chunked, conn->rbuf + conn->dend, &size);
        conn->dend += size; /* also on an error: what was decoded before it */
        if (ret == -1) {
            conn->rlen = conn->dend;
            return -EPROTO;
        }
        conn->rlen = conn->dend + (ret > 0 ? (size_t)ret : 0);
        if (ret >= 0)
            u->net_end = true;
        break;
    }
    case H1_BODY_UNTIL_EOF:
        conn->dend = conn->rlen;
        break;
    default:
        break;
    }
    if (conn->rlen > conn->dend) {
        u->keepalive = false; /* bytes after the response: the connection is out of step */
        conn->rlen = conn->dend;
    }
    return 0;
}

/* Everything is read and delivered: the connection goes back to the pool (or is closed). */
static void h1_complete(h1_upstream_t *u)
{
    h1_conn_release(u->conn, u->keepalive);
    h1_end(u, 0);
}

/* Delivers the decoded bytes while the receiver is writable; completes the request when
 * the response is over. u may be freed on return unless in_start/in_resume. */
static void h1_pump(h1_upstream_t *u)
{
    h1_conn_t *conn = u->conn;
    while (conn->rpos < conn->dend) {
        if (u->cbs->writable != NULL && !u->cbs->writable(u->data)) {
            /* Hold: stop reading; what was read stays in the buffer until upstream_resume. */
            u->paused = true;
            if (conn->reading) {
                uv_read_stop((uv_stream_t *)&conn->tcp);
                conn->reading = false;
            }
            return;
        }
        size_t n = conn->dend - conn->rpos;
        int ret = u->cbs->on_body(u->data, (const uint8_t *)conn->rbuf + conn->rpos, n);
        conn->rpos += n;
        if (ret != 0) {
            h1_fail(u, -ECANCELED);
            return;
        }
    }
    assert(conn->rlen == conn->dend);
    h1_conn_reset_buf(conn);
    if (u->body_error != 0)
        h1_fail(u, u->body_error);
    else if (u->net_end)
        h1_complete(u);
}

static void h1_retry(h1_upstream_t *u)
{
    h1_conn_close(u->conn);
    u->retried = true;
    u->reused = false;
    h1_connect_new(u); /* a new connection: the others in the pool may be as stale */
}

/* The connection ended (EOF or error) while u was reading it. */
static void h1_on_read_end(h1_upstream_t *u, int err)
{
    h1_conn_t *conn = u->conn;
    if (!u->head_done) {
        if (conn->rlen == 0 && u->reused && !u->retried) {
            /* A pooled connection the upstream had closed: send once more. */
            h1_retry(u);
            return;
        }
        h1_fail(u, -EIO);
        return;
    }
    if (u->body_mode == H1_BODY_UNTIL_EOF && err == UV_EOF) {
        u->net_end = true;
        h1_pump(u);
        return;
    }
    h1_fail(u, -EIO);
}

static void on_conn_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    h1_conn_t *conn = stream->data;
    (void)buf;
    if (nread > 0) {
        conn->rlen += (size_t)nread;
        if (conn->rlen > conn->rdirty)
            conn->rdirty = conn->rlen;
    }
    h1_upstream_t *u = conn->u;
    if (u == NULL) {
        /* Idle: the upstream closed it, or sent something nobody asked for. */
        if (nread != 0)
            h1_conn_close(conn);
        return;
    }
    if (nread == 0)
        return;
    if (nread < 0) {
        h1_on_read_end(u, (int)nread);
        return;
    }
    h1_flush_sent(u);
    if (!u->head_done) {
        int ret = h1_parse_head(u);
        if (ret > 0)
            return;
        if (ret < 0) {
            h1_fail(u, ret);
            return;
        }
    }
    u->body_error = h1_decode(u);
    if (u->body_error != 0 && conn->reading) {
        uv_read_stop(stream); /* nothing more is read: the held bytes go out, then the error */
        conn->reading = false;
    }
    h1_pump(u);
}

/* ---- request -------------------------------------------------------------------------- */

/* A write failed: before any answer on a reused connection, the request goes again; in all
 * other cases the connection is dead and its read side reports how (EOF, reset) — an
 * upstream may answer early and close without reading the whole request. */
static void h1_on_write_error(h1_upstream_t *u)
{
    u->keepalive = false;
    if (!u->head_done && u->conn->rlen == 0 && u->reused && !u->retried)
        h1_retry(u);
}

static void on_conn_written(uv_write_t *req, int status)
{
    h1_conn_t *conn = req->data;
    conn->writing = false;
    if (conn->closing || conn->u == NULL)
        return;
    if (status < 0)
        h1_on_write_error(conn->u);
}

/* Writes the request on u->conn: at once as far as the socket takes it, the rest queued. */
static int h1_send(h1_upstream_t *u)
{
    h1_conn_t *conn = u->conn;
    uv_buf_t bufs[2] = {uv_buf_init(u->head, (unsigned)u->head_len),
                        uv_buf_init((char *)(uintptr_t)u->body, (unsigned)u->body_len)};
    unsigned nbufs = u->body_len > 0 ? 2 : 1;
    int ret = uv_try_write((uv_stream_t *)&conn->tcp, bufs, nbufs);
    if (ret == UV_EAGAIN)
        ret = 0;
    if (ret < 0)
        return ret;
    size_t written = (size_t)ret;
    unsigned first = 0;
    while (first < nbufs && written >= bufs[first].len) {
        written -= bufs[first].len;
        first++;
    }
    if (first == nbufs)
        return 0;
    bufs[first].base += written;
    bufs[first].len -= written;
    ret = uv_write(&conn->write_req, (uv_stream_t *)&conn->tcp, bufs + first, nbufs - first, on_conn_written);
    if (ret == 0)
        conn->writing = true;
    return ret;
}

static int h1_connect_error(int status)
{
    switch (status) {
    case UV_ETIMEDOUT:
        return -ETIMEDOUT;
    case UV_ENETUNREACH:
    case UV_EHOSTUNREACH:
    case UV_EADDRNOTAVAIL:
    case UV_EAFNOSUPPORT:
        return -EHOSTUNREACH;
    default:
        return -ECONNREFUSED;
    }
}

/* The connect to address `index` failed with status: the next address, or the end. */
static void h1_connect_next(h1_upstream_t *u, size_t index, int status)
{
    h1_pool_t *pool = u->pool;
    if (u->addr_tries < pool->n_addrs) {
        h1_connect_addr(u, (index + 1) % pool->n_addrs);
        return;
    }
    h1_fail(u, h1_connect_error(status));
}

static void on_conn_connected(uv_connect_t *req, int status)
{
    h1_conn_t *conn = req->data;
    if (conn->connecting) {
        h2o_linklist_unlink(&conn->link);
        conn->connecting = false;
    }
    if (conn->closing)
        return; /* cancelled or timed out */
    h1_upstream_t *u = conn->u;
    assert(u != NULL);
    if (status < 0) {
        h1_conn_close(conn);
        h1_connect_next(u, conn->addr_index, status);
        return;
    }
    conn->pool->preferred = conn->addr_index;
    if (uv_read_start((uv_stream_t *)&conn->tcp, on_conn_alloc, on_conn_read) != 0) {
        h1_fail(u, -ECONNREFUSED);
        return;
    }
    conn->reading = true;
    if (h1_send(u) < 0)
        u->keepalive = false; /* the read side reports the failure */
    if (!u->sent) {
        u->sent = true;
        u->cbs->on_sent(u->data);
    }
}

static void on_connect_timeout(uv_timer_t *timer)
{
    h1_worker_t *hw = timer->data;
    uint64_t now = uv_now(hw->loop);
    while (!h2o_linklist_is_empty(&hw->connecting)) {
        h1_conn_t *conn = H2O_STRUCT_FROM_MEMBER(h1_conn_t, link, hw->connecting.next);
        if (conn->since_ms > now) {
            uv_timer_start(timer, on_connect_timeout, conn->since_ms - now, 0);
            return;
        }
        h1_upstream_t *u = conn->u;
        h1_conn_close(conn);
        h1_fail(u, -ETIMEDOUT);
    }
}

static void h1_connect_addr(h1_upstream_t *u, size_t index)
{
    h1_pool_t *pool = u->pool;
    h1_worker_t *hw = u->hw;
    u->addr_tries++;
    h1_conn_t *conn = malloc(sizeof(*conn));
    if (conn == NULL) {
        h1_end(u, -ENOMEM);
        return;
    }
    memset(conn, 0, offsetof(h1_conn_t, rbuf));
    conn->pool = pool;
    conn->addr_index = index;
    uv_tcp_init(hw->loop, &conn->tcp);
    conn->tcp.data = conn;
    conn->connect_req.data = conn;
    conn->write_req.data = conn;
    conn->u = u;
    u->conn = conn;
    uv_tcp_nodelay(&conn->tcp, 1);
    int ret = uv_tcp_connect(&conn->connect_req, &conn->tcp, &pool->addrs[index].sa, on_conn_connected);
    if (ret != 0) {
        h1_conn_close(conn);
        h1_connect_next(u, index, ret);
        return;
    }
    conn->connecting = true;
    conn->since_ms = uv_now(hw->loop) + hw->connect_ms;
    h2o_linklist_insert(&hw->connecting, &conn->link);
    if (!uv_is_active((uv_handle_t *)&hw->connect_timer))
        uv_timer_start(&hw->connect_timer, on_connect_timeout, hw->connect_ms, 0);
}

static void on_lookup(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    h1_lookup_t *lookup = H2O_STRUCT_FROM_MEMBER(h1_lookup_t, req, req);
    h1_pool_t *pool = lookup->pool;
    free(lookup);
    if (pool == NULL) {
        uv_freeaddrinfo(res);
        return;
    }
    pool->lookup = NULL;
    pool->n_addrs = 0;
    pool->preferred = 0;
    if (status == 0) {
        for (struct addrinfo *ai = res; ai != NULL && pool->n_addrs < H1_MAX_ADDRS; ai = ai->ai_next) {
            h1_addr_t *a = &pool->addrs[pool->n_addrs];
            if (ai->ai_family == AF_INET && ai->ai_addrlen >= sizeof(a->sin)) {
                memcpy(&a->sin, ai->ai_addr, sizeof(a->sin));
                a->sin.sin_port = htons(pool->port);
            } else if (ai->ai_family == AF_INET6 && ai->ai_addrlen >= sizeof(a->sin6)) {
                memcpy(&a->sin6, ai->ai_addr, sizeof(a->sin6));
                a->sin6.sin6_port = htons(pool->port);
            } else {
                continue;
            }
            pool->n_addrs++;
        }
    }
    uv_freeaddrinfo(res);
    pool->addrs_expire_ms = pool->n_addrs > 0 ? uv_now(pool->hw->loop) + H1_DNS_TTL_MS : 0;

    /* A callback may start a request that waits for a new lookup: work on a copy. */
    h2o_linklist_t waiting;
    h2o_linklist_init_anchor(&waiting);
    h2o_linklist_insert_list(&waiting, &pool->waiting);
    while (!h2o_linklist_is_empty(&waiting)) {
        h1_upstream_t *u = H2O_STRUCT_FROM_MEMBER(h1_upstream_t, wait_link, waiting.next);
        h2o_linklist_unlink(&u->wait_link);
        if (pool->n_addrs == 0) {
            h1_end(u, -EHOSTUNREACH);
        } else {
            u->addr_tries = 0;
            h1_connect_addr(u, pool->preferred);
        }
    }
}

/* Opens a new connection for u, looking the name up first if needed. */
static void h1_connect_new(h1_upstream_t *u)
{
    h1_pool_t *pool = u->pool;
    if (pool->n_addrs > 0 && uv_now(pool->hw->loop) < pool->addrs_expire_ms) {
        u->addr_tries = 0;
        h1_connect_addr(u, pool->preferred);
        return;
    }
    h2o_linklist_insert(&pool->waiting, &u->wait_link);
    if (pool->lookup != NULL)
        return;
    h1_lookup_t *lookup = malloc(sizeof(*lookup));
    if (lookup == NULL) {
        h2o_linklist_unlink(&u->wait_link);
        h1_end(u, -ENOMEM);
        return;
    }
    lookup->pool = pool;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = AI_ADDRCONFIG;
    if (uv_getaddrinfo(pool->hw->loop, &lookup->req, on_lookup, pool->host, NULL, &hints) != 0) {
        free(lookup);
        h2o_linklist_unlink(&u->wait_link);
        h1_end(u, -EHOSTUNREACH);
        return;
    }
    pool->lookup = lookup;
}

/* Delivers held bytes synchronously; on_done, if the response is over, comes from the loop. */
static void h1_resume(upstream_t *super)
{
    h1_upstream_t *u = (h1_upstream_t *)super;
    if (!u->paused)
        return;
    u->paused = false;
    u->in_resume = true;
    h1_pump(u);
    h1_conn_t *conn = u->conn;
    if (!u->paused && !u->ended && conn != NULL && !conn->reading && u->body_error == 0) {
        if (uv_read_start((uv_stream_t *)&conn->tcp, on_conn_alloc, on_conn_read) == 0)
            conn->reading = true;
        else
            h1_fail(u, -EIO);
    }
    u->in_resume = false; /* u is never freed inside resume: every end is deferred */
}

static void h1_cancel(upstream_t *super)
{
    h1_free((h1_upstream_t *)super);
}

/* ---- worker state --------------------------------------------------------------------- */

int upstream_h1_worker_init(worker_t *w)
{
    if (w->upstream_h1 != NULL)
        return 0;
    h1_worker_t *hw = calloc(1, sizeof(*hw));
    if (hw == NULL)
        return -ENOMEM;
    uint64_t connect_ms = 10000;
    if (w->server != NULL && w->server->cfg != NULL)
        connect_ms = w->server->cfg->upstream_connect_timeout_ms;
    hw->loop = &w->loop;
    hw->connect_ms = connect_ms > 0 ? connect_ms : 1;
    h2o_linklist_init_anchor(&hw->connecting);
    h2o_linklist_init_anchor(&hw->deferred);
    uv_timer_t *timers[] = {&hw->defer_timer, &hw->connect_timer, &hw->sweep_timer};
    for (size_t i = 0; i < 3; i++) {
        uv_timer_init(hw->loop, timers[i]);
        timers[i]->data = hw;
    }
    /* Only the deferred callbacks need the loop to run; the others go with what they serve. */
    uv_unref((uv_handle_t *)&hw->connect_timer);
    uv_unref((uv_handle_t *)&hw->sweep_timer);
    hw->open_timers = 3;
    w->upstream_h1 = hw;
    return 0;
}

static void on_timer_closed(uv_handle_t *handle)
{
    h1_worker_t *hw = handle->data;
    if (--hw->open_timers == 0)
        free(hw);
}

void upstream_h1_worker_dispose(worker_t *w)
{
    h1_worker_t *hw = w->upstream_h1;
    if (hw == NULL)
        return;
    assert(hw->inflight == 0);
    w->upstream_h1 = NULL;
    for (size_t i = 0; i < hw->n_pools; i++) {
        h1_pool_t *pool = hw->pools[i];
        while (!h2o_linklist_is_empty(&pool->idle))
            h1_conn_close(H2O_STRUCT_FROM_MEMBER(h1_conn_t, link, pool->idle.next));
        if (pool->lookup != NULL) {
            pool->lookup->pool = NULL;
            uv_cancel((uv_req_t *)&pool->lookup->req);
        }
        free(pool);
    }
    assert(hw->n_idle == 0);
    uv_close((uv_handle_t *)&hw->defer_timer, on_timer_closed);
    uv_close((uv_handle_t *)&hw->connect_timer, on_timer_closed);
    uv_close((uv_handle_t *)&hw->sweep_timer, on_timer_closed);
}

size_t upstream_h1_idle_count(const worker_t *w)
{
    const h1_worker_t *hw = w->upstream_h1;
    return hw != NULL ? hw->n_idle : 0;
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
    p->hw = hw;
    h2o_linklist_init_anchor(&p->idle);
    h2o_linklist_init_anchor(&p->waiting);
    p->port = port;
    p->host_len = host_len;
    memcpy(p->host, host, host_len);
    /* A numeric host is its own address for good; a name is looked up when needed. */
    h1_addr_t *a = &p->addrs[0];
    if (inet_pton(AF_INET, p->host, &a->sin.sin_addr) == 1) {
        a->sin.sin_family = AF_INET;
        a->sin.sin_port = htons(port);
        p->n_addrs = 1;
    } else if (inet_pton(AF_INET6, p->host, &a->sin6.sin6_addr) == 1) {
        a->sin6.sin6_family = AF_INET6;
        a->sin6.sin6_port = htons(port);
        p->n_addrs = 1;
    }
    p->addrs_expire_ms = p->n_addrs > 0 ? UINT64_MAX : 0;
    hw->last_pool = hw->n_pools;
    hw->pools[hw->n_pools++] = p;
    return p;
}

/* ---- request head --------------------------------------------------------------------- */

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
    char tmp[21];
    size_t n = util_u64_dec(v, tmp);
    memcpy(out, tmp, n);
    return n;
}

int upstream_h1_start(struct worker *w, const upstream_request_t *req, const upstream_cbs_t *cbs, void *data,
                      upstream_t **out)
{
    h2o_url_t url;
    if (req == NULL || req->url == NULL || cbs == NULL || cbs->on_body == NULL || cbs->on_done == NULL ||
        cbs->on_head == NULL || cbs->on_sent == NULL || out == NULL || (req->body == NULL && req->body_len > 0))
        return -EINVAL;
    /* What h2o's URL parser declines (user info, odd forms) is left to curl. */
    if (h2o_url_parse(req->url, strlen(req->url), &url) != 0 || url.scheme != &H2O_URL_SCHEME_HTTP ||
        url.host.len == 0 || url.host.len > H1_MAX_HOST || req->body_len > UINT32_MAX)
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

    const char *auth_prefix = upstream_auth_prefix(req->auth), *auth_extra = upstream_auth_extra(req->auth);
    static const char accept_sse[] = "text/event-stream", accept_json[] = "application/json";
    const char *accept = req->stream ? accept_sse : accept_json;
    size_t accept_len = req->stream ? sizeof(accept_sse) - 1 : sizeof(accept_json) - 1;
    size_t head_cap = sizeof("POST  HTTP/1.1\r\nHost: \r\n") - 1 + url.path.len + url.authority.len +
                      (key_len > 0 ? strlen(auth_prefix) + 2 + key_len : 0) +
                      (auth_extra != NULL ? strlen(auth_extra) + 2 : 0) +
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
    u->body = req->body;
    u->body_len = req->body_len;

    char *p = u->head;
    H1_PUT_LIT(p, "POST ");
    H1_PUT(p, url.path.base, url.path.len);
    H1_PUT_LIT(p, " HTTP/1.1\r\nHost: ");
    H1_PUT(p, url.authority.base, url.authority.len);
    H1_PUT_LIT(p, "\r\n");
    if (key_len > 0) {
        H1_PUT(p, auth_prefix, strlen(auth_prefix));
        H1_PUT(p, req->api_key, key_len);
        H1_PUT_LIT(p, "\r\n");
    }
    if (auth_extra != NULL) {
        H1_PUT(p, auth_extra, strlen(auth_extra));
        H1_PUT_LIT(p, "\r\n");
    }
    H1_PUT_LIT(p, "Content-Type: application/json\r\nAccept: ");
    H1_PUT(p, accept, accept_len);
    H1_PUT_LIT(p, "\r\nContent-Length: ");
    p += h1_format_size(p, req->body_len);
    H1_PUT_LIT(p, "\r\nUser-Agent: " H1_USER_AGENT "\r\n\r\n");
    u->head_len = (size_t)(p - u->head);
    assert(u->head_len <= head_cap);

    hw->inflight++;
    u->in_start = true;
    h1_conn_t *conn = h1_pool_take(pool);
    if (conn != NULL) {
        conn->u = u;
        u->conn = conn;
        u->reused = true;
        u->sent = u->sent_pending = true;
        h1_defer(u);
        if (h1_send(u) < 0)
            h1_on_write_error(u);
    } else {
        h1_connect_new(u);
    }
    u->in_start = false;
    *out = &u->super;
    return 0;
}
