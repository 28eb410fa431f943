/* peer.c — peer RPC transport (see peer.h).
 *
 * Server: an h2o context of its own on the main loop (like the admin listener), one path,
 * POST /peer/v1; the body (at most one frame) is opened with peer_frame_open, the envelope
 * unpacked and version-checked, and its messages handed to the callback before the answer
 * is sent.
 *
 * Client: one curl_uv on the main loop; HTTP/2 with prior knowledge, so the batches to one
 * destination share a connection. A destination's queue is the concatenation of its
 * messages already encoded as PeerEnvelope field 5 (tag, length, bytes): a batch is the
 * envelope's own fields followed by that queue, with no second encoding. */
#include "node/peer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <h2o.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "cluster/curl_uv.h"
#include "cluster/peer_frame.h"
#include "node/log.h"
#include "node/server.h"
#include "node/util.h"

#define PEER_PATH "/peer/v1"
#define PEER_MAX_CONNS 1024
#define PEER_MAX_ANSWER 4096
#define PEER_BATCH_MAX ((size_t)1 << 20) /* payload bytes per POST */

typedef struct peer_conn {
    uv_tcp_t tcp; /* first: h2o's close callback gets the handle */
    peer_t *peer;
    h2o_linklist_t link;
} peer_conn_t;

typedef struct dest {
    struct dest *next;
    char name[64];
    char addr[80];
    char url[112];
    uint8_t *queue; /* encoded messages (field 5 of PeerEnvelope) */
    size_t len, cap;
    size_t n_msgs;
    int inflight;
    uint64_t last_version_log_ms, last_fail_log_ms;
} dest_t;

typedef struct post {
    struct post *next, *prev;
    peer_t *peer;
    dest_t *dest;
    CURL *easy;
    struct curl_slist *headers;
    uint8_t *body;
    size_t n_msgs;
    uint8_t answer[PEER_MAX_ANSWER];
    size_t answer_len;
} post_t;

typedef struct peer_handler {
    h2o_handler_t super;
    peer_t *peer;
} peer_handler_t;

struct peer {
    uv_loop_t *loop;
    char *self;
    peer_frame_t *frame;
    uint64_t boot_id;
    peer_message_cb cb;
    void *cb_data;
    /* server */
    bool listening;
    int port;
    uv_tcp_t listener;
    h2o_globalconf_t globalconf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    SSL_CTX *ssl_ctx;
    char *ca_file;
    h2o_linklist_t conns;
    size_t num_conns;
    /* client */
    curl_uv_t *cu;
    dest_t *dests;
    uv_check_t check;
    bool check_started;
    size_t posts;
    post_t *post_list;
    /* shutdown */
    bool stopping, listener_closed, check_closed, finished;
    uv_idle_t reaper;
    peer_stats_t stats;
};

static uint64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

/* ---- encoding helpers ----------------------------------------------------------------- */

static size_t put_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* Writes msg (packed size mlen) as one PeerEnvelope.messages entry (field 5: tag, length,
 * bytes) at out, which has room for mlen + 11 bytes; returns the bytes written. */
static size_t put_message(uint8_t *out, const Llmrelay__PeerMessage *msg, size_t mlen)
{
    size_t n = 0;
    out[n++] = (5 << 3) | 2;
    n += put_varint(out + n, mlen);
    llmrelay__peer_message__pack(msg, out + n);
    return n + mlen;
}

/* Seals an envelope with the given messages (already encoded as field 5) into a malloc'd
 * frame. */
static int seal_envelope(peer_t *p, const uint8_t *msgs, size_t msgs_len, uint8_t **out, size_t *out_len)
{
    Llmrelay__PeerEnvelope env = LLMRELAY__PEER_ENVELOPE__INIT;
    env.version_major = PEER_PROTO_VERSION_MAJOR;
    env.version_minor = PEER_PROTO_VERSION_MINOR;
    env.sender = p->self;
    uint64_t now = wall_ms();
    env.sent_ms = now;
    env.boot_id = p->boot_id;
    size_t head = llmrelay__peer_envelope__get_packed_size(&env);
    size_t payload = head + msgs_len;
    if (payload > PEER_FRAME_MAX_PAYLOAD)
        return -EMSGSIZE;
    size_t cap = payload + PEER_FRAME_OVERHEAD;
    uint8_t *buf = malloc(cap);
    if (buf == NULL)
        return -ENOMEM;
    llmrelay__peer_envelope__pack(&env, buf + PEER_FRAME_HEADER_LEN);
    if (msgs_len > 0)
        memcpy(buf + PEER_FRAME_HEADER_LEN + head, msgs, msgs_len);
    int rc = peer_frame_seal(p->frame, now, buf + PEER_FRAME_HEADER_LEN, payload, buf, cap, out_len);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/* ---- server --------------------------------------------------------------------------- */

static void answer(h2o_req_t *req, peer_t *p, int status, Llmrelay__PeerError__Code code, const char *detail)
{
    uint8_t *frame = NULL;
    size_t flen = 0;
    int rc;
    if (code != LLMRELAY__PEER_ERROR__CODE__UNSPECIFIED) {
        Llmrelay__PeerError e = LLMRELAY__PEER_ERROR__INIT;
        e.code = code;
        e.detail = (char *)detail;
        Llmrelay__PeerMessage m = LLMRELAY__PEER_MESSAGE__INIT;
        m.body_case = LLMRELAY__PEER_MESSAGE__BODY_ERROR;
        m.error = &e;
        uint8_t tmp[512];
        size_t mlen = llmrelay__peer_message__get_packed_size(&m);
        if (mlen + 11 > sizeof(tmp))
            rc = -EMSGSIZE;
        else
            rc = seal_envelope(p, tmp, put_message(tmp, &m, mlen), &frame, &flen);
    } else {
        rc = seal_envelope(p, NULL, 0, &frame, &flen);
    }
    req->res.status = status;
    req->res.reason = status == 200 ? "OK" : status == 409 ? "Conflict" : status == 403 ? "Forbidden" : "Bad Request";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/x-llmrelay-peer"));
    if (rc != 0) {
        h2o_send_inline(req, NULL, 0);
        return;
    }
    char *body = h2o_mem_alloc_pool(&req->pool, flen);
    memcpy(body, frame, flen);
    free(frame);
    h2o_send_inline(req, body, flen);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    peer_t *p = ((peer_handler_t *)self)->peer;
    if (!h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT(PEER_PATH)) ||
        !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
        req->res.status = 404;
        req->res.reason = "Not Found";
        h2o_send_inline(req, NULL, 0);
        return 0;
    }
    const uint8_t *body = (const uint8_t *)req->entity.base;
    size_t len = req->entity.base != NULL ? req->entity.len : 0;
    peer_frame_info_t info;
    peer_frame_reason_t why = PEER_FRAME_OK;
    int rc = peer_frame_open(p->frame, body, len, wall_ms(), &info, &why);
    if (rc != 0) {
        p->stats.refused_frames++;
        log_debug("peer: frame refused: %s", peer_frame_reason_name(why));
        req->res.status = 403;
        req->res.reason = "Forbidden";
        h2o_send_inline(req, NULL, 0);
        return 0;
    }
    Llmrelay__PeerEnvelope *env = llmrelay__peer_envelope__unpack(NULL, info.payload_len, info.payload);
    if (env == NULL) {
        p->stats.bad_envelopes++;
        answer(req, p, 400, LLMRELAY__PEER_ERROR__CODE__BAD_REQUEST, "envelope does not parse");
        return 0;
    }
    char why_text[160];
    if (!peer_version_compatible(PEER_PROTO_VERSION_MAJOR, env->version_major, why_text, sizeof(why_text))) {
        p->stats.refused_version++;
        log_error("peer: envelope from %.64s: %s", env->sender != NULL ? env->sender : "?", why_text);
        llmrelay__peer_envelope__free_unpacked(env, NULL);
        answer(req, p, 409, LLMRELAY__PEER_ERROR__CODE__VERSION, "incompatible major version");
        return 0;
    }
    p->stats.batches_received++;
    const char *sender = env->sender != NULL ? env->sender : "";
    for (size_t i = 0; i < env->n_messages; i++) {
        Llmrelay__PeerMessage *m = env->messages[i];
        p->stats.messages_received++;
        if (m->body_case == LLMRELAY__PEER_MESSAGE__BODY__NOT_SET) {
            p->stats.unknown_messages++;
            continue;
        }
        if (p->cb != NULL && !p->stopping)
            p->cb(p->cb_data, sender, info.boot_id, m);
    }
    llmrelay__peer_envelope__free_unpacked(env, NULL);
    answer(req, p, 200, LLMRELAY__PEER_ERROR__CODE__UNSPECIFIED, NULL);
    return 0;
}

static void peer_finish(peer_t *p);

static void maybe_finish(peer_t *p)
{
    if (p->stopping && (!p->listening || p->listener_closed) && p->num_conns == 0 && p->check_closed &&
        p->posts == 0)
        peer_finish(p);
}

static void on_conn_close(uv_handle_t *h)
{
    peer_conn_t *c = (peer_conn_t *)h;
    peer_t *p = c->peer;
    h2o_linklist_unlink(&c->link);
    free(c);
    p->num_conns--;
    maybe_finish(p);
}

static void on_connection(uv_stream_t *listener, int status)
{
    peer_t *p = H2O_STRUCT_FROM_MEMBER(peer_t, listener, listener);
    if (status != 0 || p->stopping)
        return;
    peer_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->peer = p;
    uv_tcp_init(p->loop, &c->tcp);
    h2o_linklist_insert(&p->conns, &c->link);
    p->num_conns++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 || p->num_conns > PEER_MAX_CONNS) {
        uv_close((uv_handle_t *)&c->tcp, on_conn_close);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&c->tcp, on_conn_close);
    h2o_accept(&p->accept_ctx, sock);
}

/* ---- client --------------------------------------------------------------------------- */

static void flush_all(peer_t *p);

static void on_check(uv_check_t *h)
{
    flush_all(h->data);
}

static size_t on_answer_body(char *ptr, size_t size, size_t nmemb, void *data)
{
    post_t *po = data;
    size_t n = size * nmemb;
    size_t room = sizeof(po->answer) - po->answer_len;
    size_t take = n < room ? n : room;
    memcpy(po->answer + po->answer_len, ptr, take);
    po->answer_len += take;
    return n;
}

static void post_unlink(peer_t *p, post_t *po)
{
    if (po->prev != NULL)
        po->prev->next = po->next;
    else if (p->post_list == po)
        p->post_list = po->next;
    if (po->next != NULL)
        po->next->prev = po->prev;
    po->next = po->prev = NULL;
}

static void post_free(post_t *po)
{
    curl_slist_free_all(po->headers);
    free(po->body);
    free(po);
}

static void on_post_done(CURL *easy, CURLcode result, void *data)
{
    post_t *po = data;
    peer_t *p = po->peer;
    dest_t *d = po->dest;
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(easy);
    po->easy = NULL;
    d->inflight--;
    p->posts--;
    post_unlink(p, po);
    if (result == CURLE_OK && status == 200) {
        p->stats.batches_sent++;
        p->stats.messages_sent += po->n_msgs;
    } else {
        p->stats.batches_failed++;
        p->stats.messages_dropped += po->n_msgs;
        uint64_t now = wall_ms();
        if (status == 409 && now - d->last_version_log_ms > 10000) {
            d->last_version_log_ms = now;
            log_error("peer: %s (%s) refused our protocol version %u.%u (incompatible major version)", d->name,
                      d->addr, PEER_PROTO_VERSION_MAJOR, PEER_PROTO_VERSION_MINOR);
        } else if (now - d->last_fail_log_ms > 10000) {
            d->last_fail_log_ms = now; /* a dead peer fails every retry: one line per 10 s */
            log_warn("peer: batch of %zu messages to %s (%s) failed: %s (status %ld)", po->n_msgs, d->name, d->addr,
                     curl_easy_strerror(result), status);
        }
    }
    post_free(po);
    if (p->stopping)
        maybe_finish(p);
    else if (d->len > 0)
        flush_all(p);
}

static void flush_dest(peer_t *p, dest_t *d)
{
    while (d->len > 0 && d->inflight < PEER_MAX_INFLIGHT) {
        /* take whole messages up to PEER_BATCH_MAX */
        size_t take = 0, n_msgs = 0;
        while (take < d->len) {
            /* each entry: tag byte, varint length, bytes */
            size_t i = take + 1;
            uint64_t mlen = 0;
            int shift = 0;
            while (i < d->len) {
                uint8_t b = d->queue[i++];
                mlen |= (uint64_t)(b & 0x7f) << shift;
                shift += 7;
                if (!(b & 0x80))
                    break;
            }
            size_t end = i + (size_t)mlen;
            if (take > 0 && end > PEER_BATCH_MAX)
                break;
            take = end;
            n_msgs++;
        }
        post_t *po = calloc(1, sizeof(*po));
        if (po == NULL)
            return;
        po->peer = p;
        po->dest = d;
        po->n_msgs = n_msgs;
        size_t flen = 0;
        int rc = seal_envelope(p, d->queue, take, &po->body, &flen);
        memmove(d->queue, d->queue + take, d->len - take);
        d->len -= take;
        d->n_msgs -= n_msgs;
        if (rc != 0) {
            p->stats.batches_failed++;
            p->stats.messages_dropped += n_msgs;
            log_warn("peer: cannot seal a batch for %s: %s", d->name, strerror(-rc));
            post_free(po);
            continue;
        }
        po->easy = curl_easy_init();
        po->headers = curl_slist_append(NULL, "Content-Type: application/x-llmrelay-peer");
        po->headers = curl_slist_append(po->headers, "Expect:");
        CURL *e = po->easy;
        curl_easy_setopt(e, CURLOPT_URL, d->url);
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
        /* Without --peer-ca-file the peer's certificate is a throw-away one: the frame's
         * HMAC authenticates it. With it, the chain must lead to those CAs. */
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, p->ca_file != NULL ? 1L : 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
        if (p->ca_file != NULL)
            curl_easy_setopt(e, CURLOPT_CAINFO, p->ca_file);
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, po->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)flen);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, po->headers);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)PEER_TIMEOUT_MS);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 1000L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_answer_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, po);
        if (curl_uv_add(p->cu, e, on_post_done, po) != 0) {
            curl_easy_cleanup(e);
            p->stats.batches_failed++;
            p->stats.messages_dropped += n_msgs;
            post_free(po);
            return;
        }
        d->inflight++;
        p->posts++;
        po->next = p->post_list;
        if (po->next != NULL)
            po->next->prev = po;
        p->post_list = po;
    }
}

static void flush_all(peer_t *p)
{
    for (dest_t *d = p->dests; d != NULL; d = d->next)
        if (d->len > 0)
            flush_dest(p, d);
}

static dest_t *dest_get(peer_t *p, const char *name, const char *addr)
{
    for (dest_t *d = p->dests; d != NULL; d = d->next)
        if (strcmp(d->name, name) == 0) {
            if (strcmp(d->addr, addr) != 0) { /* the member moved (restart on another port) */
                snprintf(d->addr, sizeof(d->addr), "%s", addr);
                snprintf(d->url, sizeof(d->url), "https://%s" PEER_PATH, addr);
            }
            return d;
        }
    if (strlen(name) >= sizeof(((dest_t *)0)->name) || strlen(addr) >= sizeof(((dest_t *)0)->addr))
        return NULL;
    dest_t *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    snprintf(d->name, sizeof(d->name), "%s", name);
    snprintf(d->addr, sizeof(d->addr), "%s", addr);
    snprintf(d->url, sizeof(d->url), "https://%s" PEER_PATH, addr);
    d->next = p->dests;
    p->dests = d;
    return d;
}

int peer_send(peer_t *p, const char *name, const char *addr, const Llmrelay__PeerMessage *msg)
{
    if (p == NULL || p->stopping || name == NULL || addr == NULL || addr[0] == '\0')
        return -EINVAL;
    dest_t *d = dest_get(p, name, addr);
    if (d == NULL)
        return -EINVAL;
    size_t mlen = llmrelay__peer_message__get_packed_size(msg);
    size_t need = d->len + mlen + 11;
    if (need > PEER_MAX_QUEUED) {
        p->stats.messages_dropped++;
        return -ENOBUFS;
    }
    if (need > d->cap) {
        size_t ncap = d->cap ? d->cap : 4096;
        while (ncap < need)
            ncap *= 2;
        uint8_t *q = realloc(d->queue, ncap);
        if (q == NULL)
            return -ENOMEM;
        d->queue = q;
        d->cap = ncap;
    }
    d->len += put_message(d->queue + d->len, msg, mlen);
    d->n_msgs++;
    return 0;
}

/* ---- life cycle ----------------------------------------------------------------------- */

int peer_start(uv_loop_t *loop, const char *listen, const char *self, const uint8_t *key, size_t key_len,
               const peer_tls_t *tls, peer_message_cb cb, void *cb_data, peer_t **out, char *err, size_t errlen)
{
    *out = NULL;
    peer_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    p->loop = loop;
    if (tls != NULL && tls->ca_file != NULL)
        p->ca_file = strdup(tls->ca_file);
    p->cb = cb;
    p->cb_data = cb_data;
    h2o_linklist_init_anchor(&p->conns);
    p->self = strdup(self);
    if (RAND_bytes((unsigned char *)&p->boot_id, sizeof(p->boot_id)) != 1 || p->boot_id == 0)
        p->boot_id = wall_ms() ^ ((uint64_t)getpid() << 40);
    int rc = p->self != NULL ? peer_frame_create(key, key_len, p->boot_id, NULL, &p->frame) : -ENOMEM;
    if (rc != 0) {
        snprintf(err, errlen, "peer RPC: cannot create the frame context: %s", strerror(-rc));
        free(p->ca_file);
        free(p->self);
        free(p);
        return rc;
    }
    p->cu = curl_uv_create(loop);
    if (p->cu == NULL) {
        peer_frame_free(p->frame);
        free(p->ca_file);
        free(p->self);
        free(p);
        snprintf(err, errlen, "peer RPC: out of memory");
        return -ENOMEM;
    }
    uv_check_init(loop, &p->check);
    p->check.data = p;
    uv_check_start(&p->check, on_check);
    uv_unref((uv_handle_t *)&p->check);
    p->check_started = true;

    h2o_config_init(&p->globalconf);
    p->globalconf.max_request_entity_size = PEER_FRAME_MAX_FRAME;
    p->globalconf.server_name = h2o_iovec_init(H2O_STRLIT("llmrelay-peer"));
    h2o_hostconf_t *host = h2o_config_register_host(&p->globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pathconf = h2o_config_register_path(host, "/", 0);
    peer_handler_t *handler = (peer_handler_t *)h2o_create_handler(pathconf, sizeof(*handler));
    handler->super.on_req = on_req;
    handler->peer = p;
    h2o_context_init(&p->ctx, loop, &p->globalconf);
    p->accept_ctx.ctx = &p->ctx;
    p->accept_ctx.hosts = p->globalconf.hosts;

    if (listen != NULL) {
        /* TLS 1.3 with a throw-away certificate (see the header: libcurl 7.88's h2c reuse) */
        p->ssl_ctx = SSL_CTX_new(TLS_server_method());
        bool given = tls != NULL && tls->cert != NULL && tls->key != NULL;
        if (p->ssl_ctx != NULL && given &&
            (SSL_CTX_use_certificate_chain_file(p->ssl_ctx, tls->cert) != 1 ||
             SSL_CTX_use_PrivateKey_file(p->ssl_ctx, tls->key, SSL_FILETYPE_PEM) != 1 ||
             SSL_CTX_check_private_key(p->ssl_ctx) != 1))
            snprintf(err, errlen, "--peer-tls-cert %s / --peer-tls-key %s: cannot load them", tls->cert, tls->key);
        if (p->ssl_ctx == NULL || SSL_CTX_set_min_proto_version(p->ssl_ctx, TLS1_3_VERSION) != 1 || err[0] != '\0' ||
            (!given && server_tls_self_signed(p->ssl_ctx, self, err, errlen) != 0)) {
            if (err[0] == '\0')
                snprintf(err, errlen, "peer RPC: cannot create the TLS context");
            p->stopping = true;
            peer_stop(p);
            return -EIO;
        }
        SSL_CTX_set_options(p->ssl_ctx, SSL_OP_NO_TICKET);
        h2o_ssl_register_alpn_protocols(p->ssl_ctx, h2o_http2_alpn_protocols);
        p->accept_ctx.ssl_ctx = p->ssl_ctx;
        int fd = -1;
        if ((rc = util_listen_tcp(listen, "--peer-listen", &fd, &p->port, err, errlen)) != 0) {
            p->stopping = true;
            peer_stop(p);
            return rc;
        }
        uv_tcp_init(loop, &p->listener);
        p->listening = true;
        if ((rc = uv_tcp_open(&p->listener, fd)) != 0 ||
            (rc = uv_listen((uv_stream_t *)&p->listener, 128, on_connection)) != 0) {
            snprintf(err, errlen, "--peer-listen %s: %s", listen, uv_strerror(rc));
            peer_stop(p);
            return rc;
        }
        log_info("peer RPC listening on %s (port %d)", listen, p->port);
    }
    *out = p;
    return 0;
}

int peer_port(const peer_t *p)
{
    return p != NULL ? p->port : 0;
}

void peer_get_stats(const peer_t *p, peer_stats_t *out)
{
    if (p == NULL)
        memset(out, 0, sizeof(*out));
    else
        *out = p->stats;
}

static void on_reaped(uv_handle_t *h)
{
    peer_t *p = h->data;
    free(p->ca_file);
    free(p->self);
    free(p);
}

static void peer_finish(peer_t *p)
{
    if (p->finished)
        return;
    p->finished = true;
    unsigned int stop = p->loop->stop_flag;
    h2o_context_dispose(&p->ctx);
    if (stop)
        uv_stop(p->loop);
    h2o_config_dispose(&p->globalconf);
    if (p->ssl_ctx != NULL)
        SSL_CTX_free(p->ssl_ctx);
    p->ssl_ctx = NULL;
    peer_frame_free(p->frame);
    p->frame = NULL;
    for (dest_t *d = p->dests; d != NULL;) {
        dest_t *next = d->next;
        free(d->queue);
        free(d);
        d = next;
    }
    p->dests = NULL;
    uv_idle_init(p->loop, &p->reaper);
    p->reaper.data = p;
    uv_close((uv_handle_t *)&p->reaper, on_reaped);
}

static void on_listener_close(uv_handle_t *h)
{
    peer_t *p = H2O_STRUCT_FROM_MEMBER(peer_t, listener, h);
    p->listener_closed = true;
    maybe_finish(p);
}

static void on_check_close(uv_handle_t *h)
{
    peer_t *p = h->data;
    p->check_closed = true;
    maybe_finish(p);
}

void peer_stop(peer_t *p)
{
    if (p == NULL || (p->stopping && p->check_closed))
        return;
    p->stopping = true;
    if (p->listening && !uv_is_closing((uv_handle_t *)&p->listener))
        uv_close((uv_handle_t *)&p->listener, on_listener_close);
    /* Transfers in flight are cancelled (their batches count as dropped). */
    while (p->post_list != NULL) {
        post_t *po = p->post_list;
        post_unlink(p, po);
        curl_uv_remove(p->cu, po->easy);
        curl_easy_cleanup(po->easy);
        p->stats.messages_dropped += po->n_msgs;
        post_free(po);
    }
    p->posts = 0;
    if (p->cu != NULL) {
        curl_uv_t *cu = p->cu;
        p->cu = NULL;
        curl_uv_destroy(cu);
    }
    for (h2o_linklist_t *l = p->conns.next; l != &p->conns; l = l->next) {
        peer_conn_t *c = H2O_STRUCT_FROM_MEMBER(peer_conn_t, link, l);
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            shutdown(fd, SHUT_RDWR);
    }
    if (p->check_started && !uv_is_closing((uv_handle_t *)&p->check))
        uv_close((uv_handle_t *)&p->check, on_check_close);
    else
        p->check_closed = true;
    maybe_finish(p);
}
