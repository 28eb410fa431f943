/* server.c — worker threads, listeners and TLS for the client-facing server.
 *
 * Start-up happens on the main thread so errors surface before anything runs: every
 * listening socket is created and bound here (one SO_REUSEPORT socket per worker and
 * listener, so the kernel spreads connections across workers), the TLS context is built,
 * then the worker threads start and each registers its message receiver before the main
 * thread goes on (a semaphore per worker).
 *
 * Messages main → worker: SNAPSHOT (a new config snapshot), TLS (a new SSL_CTX after
 * SIGHUP), DRAIN, STOP. Worker → main: DRAINED. Each message carries one reference to
 * what it points at; the receiver takes it over.
 *
 * The HTTP/2 Rapid Reset defence lives here too: the relay reports every stream a client
 * abandoned before its response ended, and a connection that abandons more than
 * SERVER_RESET_LIMIT streams within SERVER_RESET_WINDOW_MS gets a GOAWAY
 * (ENHANCE_YOUR_CALM) and accepts no new stream. No upstream work is started for a stream
 * already reset: h2o never calls the handler for it, and a transfer cancelled in the same
 * loop iteration it was added in has not touched the network (curl_uv_add performs no
 * I/O synchronously). */
#include "node/server.h"

#include <errno.h>
#include <fcntl.h>
#include <h2o/http2.h>
#include <h2o/http2_internal.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "node/log.h"
#include "node/privacy.h"
#include "node/metering.h"
#include "node/relay.h"
#include "node/upstream_h1.h"
#include "node/util.h"

enum { MSG_SNAPSHOT, MSG_TLS, MSG_DRAIN, MSG_STOP, MSG_DRAINED, MSG_RECORDS, MSG_METER };

typedef struct server_msg {
    h2o_multithread_message_t super;
    int type;
    void *ptr;
    size_t len;
} server_msg_t;

static void send_msg_len(h2o_multithread_receiver_t *to, int type, void *ptr, size_t len)
{
    server_msg_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        abort();
    m->type = type;
    m->ptr = ptr;
    m->len = len;
    h2o_multithread_send_message(to, &m->super);
}

static void send_msg(h2o_multithread_receiver_t *to, int type, void *ptr)
{
    send_msg_len(to, type, ptr, 0);
}

/* ---- TLS ---------------------------------------------------------------------------- */

int server_tls_self_signed(SSL_CTX *ctx, const char *name, char *err, size_t errlen)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    int ret = -EIO;
    if (pkey == NULL || x == NULL)
        goto out;
    uint8_t serial[8];
    util_random_bytes(serial, sizeof(serial));
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    X509_set_version(x, 2);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 365L * 24 * 3600);
    X509_set_pubkey(x, pkey);
    X509_NAME *subject = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(x, subject);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1");
    if (ext != NULL) {
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    if (X509_sign(x, pkey, EVP_sha256()) == 0 || SSL_CTX_use_certificate(ctx, x) != 1 ||
        SSL_CTX_use_PrivateKey(ctx, pkey) != 1)
        goto out;
    ret = 0;
out:
    if (ret != 0)
        snprintf(err, errlen, "cannot make a self-signed certificate");
    X509_free(x);
    EVP_PKEY_free(pkey);
    return ret;
}

static SSL_CTX *tls_context_new(const llmrelay_config_t *cfg, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "SSL_CTX_new failed");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, cfg->tls_min_version);
    /* CLEANSE_PLAINTEXT: a decrypted record is wiped from OpenSSL's read buffer once h2o
     * has read it; the write buffer holds only ciphertext (records are encrypted in
     * place). SSL_MODE_RELEASE_BUFFERS is not set: it freed (and so wiped) 16 KiB of
     * ciphertext buffer after every write, about 0.4 us per request for nothing. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 PRIVACY_CLEANSE_PLAINTEXT);
    if (cfg->tls_cert != NULL && cfg->tls_key != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
            snprintf(err, errlen, "cannot load --tls-cert %s", cfg->tls_cert);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            snprintf(err, errlen, "cannot load --tls-key %s (or it does not match the certificate)", cfg->tls_key);
            goto fail;
        }
    } else if (!cfg->tls_self_signed) {
        snprintf(err, errlen, "the TLS listener needs --tls-cert and --tls-key (or --tls-self-signed for development)");
        goto fail;
    } else if (server_tls_self_signed(ctx, cfg->name, err, errlen) != 0) {
        goto fail;
    }
    h2o_ssl_register_alpn_protocols(ctx, h2o_http2_alpn_protocols);
    ERR_clear_error();
    return ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

/* ---- listeners ---------------------------------------------------------------------- */

static int bind_reuseport(const char *addr, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (util_parse_hostport(addr, &ss, &len) != 0) {
        snprintf(err, errlen, "bad listen address %s", addr);
        return -EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -errno;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 1024) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(e));
        close(fd);
        return -e;
    }
    return fd;
}

static void on_conn_close(uv_handle_t *h)
{
    free(h);
}

static void on_accept(uv_stream_t *listener, int status)
{
    if (status != 0)
        return;
    worker_t *w = listener->data;
    uv_tcp_t *conn = malloc(sizeof(*conn));
    if (conn == NULL)
        return;
    uv_tcp_init(&w->loop, conn);
    if (uv_accept(listener, (uv_stream_t *)conn) != 0) {
        uv_close((uv_handle_t *)conn, on_conn_close);
        return;
    }
    uv_tcp_nodelay(conn, 1);
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)conn, on_conn_close);
    h2o_accept(listener == (uv_stream_t *)&w->listen_tls ? &w->accept_tls : &w->accept_plain, sock);
}

static void close_listeners(worker_t *w)
{
    if (!w->listening)
        return;
    w->listening = false;
    if (w->has_tls)
        uv_close((uv_handle_t *)&w->listen_tls, NULL);
    if (w->has_plain)
        uv_close((uv_handle_t *)&w->listen_plain, NULL);
}

/* ---- Rapid Reset defence ------------------------------------------------------------ */

void server_count_reset(worker_t *w, h2o_conn_t *conn, int http_version)
{
    if (http_version < 0x200)
        return;
    uint64_t now = uv_now(&w->loop);
    reset_entry_t *e = &w->resets[conn->id % SERVER_RESET_SLOTS];
    if (e->conn_id != conn->id || now - e->window_start_ms > SERVER_RESET_WINDOW_MS) {
        e->conn_id = conn->id;
        e->window_start_ms = now;
        e->count = 0;
    }
    if (++e->count != SERVER_RESET_LIMIT + 1)
        return;
    h2o_http2_conn_t *h2 = (h2o_http2_conn_t *)conn;
    if (h2->state != H2O_HTTP2_CONN_STATE_OPEN)
        return;
    log_warn("closing HTTP/2 connection %llu: more than %d stream resets in %d ms", (unsigned long long)conn->id,
             SERVER_RESET_LIMIT, SERVER_RESET_WINDOW_MS);
    h2o_http2_encode_goaway_frame(&h2->_write.buf, h2->pull_stream_ids.max_open, H2O_HTTP2_ERROR_ENHANCE_YOUR_CALM,
                                  h2o_iovec_init(H2O_STRLIT("too many stream resets")));
    h2->state = H2O_HTTP2_CONN_STATE_HALF_CLOSED;
    h2o_http2_conn_request_write(h2);
}

/* ---- worker thread ------------------------------------------------------------------ */

static void report_if_drained(worker_t *w)
{
    if (w->draining && w->inflight == 0) {
        w->draining = false; /* report once */
        send_msg(&w->server->main_receiver, MSG_DRAINED, w);
    }
}

void server_relay_finished(worker_t *w)
{
    assert(w->inflight > 0);
    w->inflight--;
    report_if_drained(w);
}

/* ---- channel breakers -------------------------------------------------------------- */

/* Makes the worker's breaker table hold the channels of its current snapshot. */
static void worker_channels_sync(worker_t *w)
{
    if (w->channels == NULL || w->snapshot == NULL)
        return;
    const snapshot_t *snap = w->snapshot;
    channels_provider_t *ps = calloc(snap->n_providers + 1, sizeof(*ps));
    if (ps == NULL) {
        log_error("worker %d: out of memory syncing the channel breakers; keeping the previous ones", w->index);
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < snap->n_providers; i++) {
        const snapshot_provider_t *p = &snap->providers[i];
        /* The admin API refuses such names; a record that has one anyway gets no breakers
         * (its channels count as closed) rather than blocking every other provider's. */
        if (p->name[0] == '\0' || strlen(p->name) > CHANNELS_MAX_PROVIDER ||
            (n > 0 && strcmp(ps[n - 1].name, p->name) == 0))
            continue;
        ps[n++] = (channels_provider_t){.name = p->name, .key_tags = p->key_tags, .n_keys = p->n_api_keys};
    }
    int rc = channels_table_sync(w->channels, ps, n);
    if (rc != 0)
        log_error("worker %d: cannot sync the channel breakers: %s", w->index, strerror(-rc));
    free(ps);
}

/* Copies the table's rows where the main thread reads them. */
static void worker_channels_publish(worker_t *w)
{
    if (w->channels == NULL)
        return;
    worker_channels_pub_t *pub = &w->channels_pub;
    uint64_t now = uv_now(&w->loop);
    size_t n = channels_table_size(w->channels);
    uv_mutex_lock(&pub->lock);
    if (n > pub->cap) {
        channels_row_t *grown = realloc(pub->rows, n * sizeof(*grown));
        if (grown != NULL) {
            pub->rows = grown;
            pub->cap = n;
        }
    }
    size_t total = channels_table_export(w->channels, now, pub->rows, pub->cap);
    pub->n = total < pub->cap ? total : pub->cap;
    uv_mutex_unlock(&pub->lock);
}

size_t server_channels_bound(server_t *s)
{
    size_t total = 0;
    for (int i = 0; i < s->n_workers; i++) {
        worker_channels_pub_t *pub = &s->workers[i].channels_pub;
        uv_mutex_lock(&pub->lock);
        total += pub->n;
        uv_mutex_unlock(&pub->lock);
    }
    return total;
}

size_t server_channels_rows(server_t *s, channels_row_t *rows, size_t cap, uint64_t *now_mono_ms)
{
    size_t n = 0;
    if (now_mono_ms != NULL)
        *now_mono_ms = uv_hrtime() / 1000000;
    for (int i = 0; i < s->n_workers; i++) {
        worker_channels_pub_t *pub = &s->workers[i].channels_pub;
        uv_mutex_lock(&pub->lock);
        n = channels_rows_merge(rows, n, cap, pub->rows, pub->n);
        uv_mutex_unlock(&pub->lock);
    }
    return n;
}

static void on_worker_msg(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    worker_t *w = H2O_STRUCT_FROM_MEMBER(worker_t, receiver, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        server_msg_t *m = H2O_STRUCT_FROM_MEMBER(server_msg_t, super.link, messages->next);
        h2o_linklist_unlink(&m->super.link);
        switch (m->type) {
        case MSG_SNAPSHOT: {
            snapshot_t *old = w->snapshot;
            w->snapshot = m->ptr;
            worker_channels_sync(w);
            worker_channels_publish(w);
            snapshot_release(old);
            break;
        }
        case MSG_TLS: {
            SSL_CTX *old = w->ssl_ctx;
            w->ssl_ctx = m->ptr;
            w->accept_tls.ssl_ctx = w->ssl_ctx;
            SSL_CTX_free(old);
            break;
        }
        case MSG_DRAIN:
            close_listeners(w);
            h2o_context_request_shutdown(&w->ctx);
            w->draining = true;
            report_if_drained(w);
            break;
        case MSG_STOP:
            close_listeners(w);
            uv_stop(&w->loop);
            break;
        case MSG_METER:
            meter_worker_on_msg(w, m->ptr);
            break;
        }
        free(m);
    }
}

#define WORKER_LOG_BUF (64 * 1024)

/* The batch goes to stdout and, by message, to the main thread's metadata store. */
static void flush_log(worker_t *w)
{
    if (w->log_len == 0)
        return;
    log_records_flush(w->log_buf, w->log_len);
    if (w->server->records_cb != NULL) {
        char *copy = malloc(w->log_len);
        if (copy != NULL) {
            memcpy(copy, w->log_buf, w->log_len);
            send_msg_len(&w->server->main_receiver, MSG_RECORDS, copy, w->log_len);
        }
    }
    w->log_len = 0;
}

static void on_log_flush(uv_timer_t *t)
{
    flush_log(t->data);
}

void worker_log_record(worker_t *w, const log_record_t *rec)
{
    if (WORKER_LOG_BUF - w->log_len < 2048)
        flush_log(w);
    size_t n = log_record_format(rec, w->log_buf + w->log_len, WORKER_LOG_BUF - w->log_len);
    if (n == 0)
        log_record_write(rec);
    w->log_len += n;
}

/* Every 100 ms: the metering reports (batched settles, returns, heartbeats); every
 * SERVER_CHANNELS_PUBLISH_MS the breaker rows for the admin view. */
static void on_housekeeping(uv_timer_t *t)
{
    worker_t *w = t->data;
    meter_worker_tick(w);
    if (++w->housekeeping_ticks >= SERVER_CHANNELS_PUBLISH_MS / 100) {
        w->housekeeping_ticks = 0;
        worker_channels_publish(w);
    }
}

void server_send_to_main(worker_t *w, meter_msg_t *msg)
{
    send_msg(&w->server->main_receiver, MSG_METER, msg);
}

void server_send_to_worker(server_t *s, int worker, meter_msg_t *msg)
{
    send_msg(&s->workers[worker].receiver, MSG_METER, msg);
}

static void worker_main(void *arg)
{
    worker_t *w = arg;
    server_t *s = w->server;
    h2o_context_init(&w->ctx, &w->loop, &s->globalconf);
    h2o_multithread_register_receiver(w->ctx.queue, &w->receiver, on_worker_msg);
    if (upstream_h1_worker_init(w) != 0 || meter_worker_init(w) != 0)
        abort();
    w->curl = curl_uv_create(&w->loop);
    if (w->curl == NULL)
        abort();
    w->channels = channels_table_new(&s->cfg->breaker);
    if (w->channels == NULL)
        abort();
    worker_channels_sync(w); /* a snapshot given before the thread ran */
    worker_channels_publish(w);
    w->accept_tls.ctx = &w->ctx;
    w->accept_tls.hosts = s->globalconf.hosts;
    w->accept_tls.ssl_ctx = w->ssl_ctx;
    w->accept_plain.ctx = &w->ctx;
    w->accept_plain.hosts = s->globalconf.hosts;
    if (w->has_tls) {
        uv_tcp_init(&w->loop, &w->listen_tls);
        w->listen_tls.data = w;
        uv_tcp_open(&w->listen_tls, w->fd_tls);
        uv_listen((uv_stream_t *)&w->listen_tls, 1024, on_accept);
    }
    if (w->has_plain) {
        uv_tcp_init(&w->loop, &w->listen_plain);
        w->listen_plain.data = w;
        uv_tcp_open(&w->listen_plain, w->fd_plain);
        uv_listen((uv_stream_t *)&w->listen_plain, 1024, on_accept);
    }
    w->listening = true;
    w->log_buf = malloc(WORKER_LOG_BUF);
    if (w->log_buf == NULL)
        abort();
    /* Metadata lines go out in batches every 50 ms (or when the buffer fills): one write
     * and one message to the store per batch, well inside the 1 s durability bound. */
    uv_timer_init(&w->loop, &w->log_flush);
    w->log_flush.data = w;
    uv_timer_start(&w->log_flush, on_log_flush, 50, 50);
    uv_unref((uv_handle_t *)&w->log_flush);
    uv_timer_init(&w->loop, &w->housekeeping);
    w->housekeeping.data = w;
    uv_timer_start(&w->housekeeping, on_housekeeping, 100, 100);
    uv_unref((uv_handle_t *)&w->housekeeping);
    uv_sem_post(&w->started);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    flush_log(w);
    /* The last published rows stay for the main thread; the table goes. */
    channels_table_free(w->channels);
    w->channels = NULL;
    /* Stopped: tell the main thread, then park until the process exits. A worker never
     * returns, so the thread-local caches h2o keeps (recycled buffers and pool chunks,
     * which no public API empties) stay reachable instead of being reported as leaks. */
    uv_sem_post(&w->stopped);
    for (;;)
        pause();
}

/* ---- main-thread side --------------------------------------------------------------- */

static void on_main_msg(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    server_t *s = H2O_STRUCT_FROM_MEMBER(server_t, main_receiver, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        server_msg_t *m = H2O_STRUCT_FROM_MEMBER(server_msg_t, super.link, messages->next);
        h2o_linklist_unlink(&m->super.link);
        if (m->type == MSG_DRAINED && atomic_fetch_add(&s->workers_idle, 1) + 1 == s->n_workers &&
            s->drained_cb != NULL)
            s->drained_cb(s);
        if (m->type == MSG_METER) {
            if (s->meter_cb != NULL)
                s->meter_cb(s->meter_data, m->ptr);
            else
                free(m->ptr);
        }
        if (m->type == MSG_RECORDS) {
            if (s->records_cb != NULL)
                s->records_cb(s->records_data, m->ptr, m->len);
            else
                free(m->ptr);
        }
        free(m);
    }
}

static void setup_globalconf(server_t *s)
{
    const llmrelay_config_t *cfg = s->cfg;
    h2o_config_init(&s->globalconf);
    s->globalconf.server_name = h2o_iovec_init(H2O_STRLIT("llmrelay"));
    /* Above --max-body so the relay itself answers 413 (on h2, h2o would refuse the stream). */
    uint64_t cap = cfg->max_body * 2 + 1024 * 1024;
    s->globalconf.max_request_entity_size = (size_t)cap;
    s->globalconf.http2.graceful_shutdown_timeout = cfg->shutdown_timeout_ms;
    h2o_hostconf_t *host = h2o_config_register_host(&s->globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_handler_t *handler = h2o_create_handler(path, sizeof(*handler));
    handler->on_req = relay_on_req;
}

static int load_upstream_cas(server_t *s, char *err, size_t errlen)
{
    if (s->cfg->upstream_ca_file == NULL)
        return 0;
    FILE *f = fopen(s->cfg->upstream_ca_file, "r");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open --upstream-ca-file %s: %s", s->cfg->upstream_ca_file, strerror(errno));
        return -EINVAL;
    }
    s->upstream_cas = sk_X509_new_null();
    X509 *x;
    while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL)
        sk_X509_push(s->upstream_cas, x);
    fclose(f);
    ERR_clear_error();
    if (sk_X509_num(s->upstream_cas) == 0) {
        snprintf(err, errlen, "no certificate in --upstream-ca-file %s", s->cfg->upstream_ca_file);
        return -EINVAL;
    }
    return 0;
}

int server_start(server_t *s, const llmrelay_config_t *cfg, const node_clock_t *clock, metrics_t *metrics,
                 uv_loop_t *main_loop, char *err, size_t errlen)
{
    /* *s comes zeroed apart from the hooks the caller set (records_cb). */
    s->cfg = cfg;
    s->clock = clock;
    s->metrics = metrics;
    s->main_loop = main_loop;
    /* Content never goes to disk: h2o must not spill big buffers into temp files. */
    h2o_socket_buffer_mmap_settings.threshold = SIZE_MAX;
    setup_globalconf(s);
    int ret = load_upstream_cas(s, err, errlen);
    if (ret != 0)
        return ret;
    SSL_CTX *ssl = tls_context_new(cfg, err, errlen);
    if (ssl == NULL)
        return -EINVAL;
    s->main_queue = h2o_multithread_create_queue(main_loop);
    h2o_multithread_register_receiver(s->main_queue, &s->main_receiver, on_main_msg);
    s->n_workers = cfg->workers;
    s->workers = calloc((size_t)s->n_workers, sizeof(worker_t));
    for (int i = 0; i < s->n_workers; i++) {
        worker_t *w = &s->workers[i];
        w->server = s;
        w->index = i;
        w->fd_tls = w->fd_plain = -1;
        w->metrics = metrics_shard(metrics, i);
        uv_mutex_init(&w->channels_pub.lock);
        util_random_bytes(w->rng, sizeof(w->rng));
        w->rng[0] |= 1;
        if (cfg->listen != NULL && cfg->listen[0] != '\0') {
            if ((w->fd_tls = bind_reuseport(cfg->listen, err, errlen)) < 0)
                return w->fd_tls;
            w->has_tls = true;
        }
        if (cfg->listen_plain != NULL) {
            if ((w->fd_plain = bind_reuseport(cfg->listen_plain, err, errlen)) < 0)
                return w->fd_plain;
            w->has_plain = true;
        }
    }
    for (int i = 0; i < s->n_workers; i++) {
        worker_t *w = &s->workers[i];
        SSL_CTX_up_ref(ssl);
        w->ssl_ctx = ssl;
        uv_loop_init(&w->loop);
        uv_sem_init(&w->started, 0);
        uv_sem_init(&w->stopped, 0);
        if (uv_thread_create(&w->thread, worker_main, w) != 0) {
            snprintf(err, errlen, "cannot start worker thread");
            return -EAGAIN;
        }
        uv_sem_wait(&w->started);
    }
    SSL_CTX_free(ssl);
    return 0;
}

static CURLcode on_curl_ssl_ctx(CURL *curl, void *ssl_ctx, void *data)
{
    server_t *s = data;
    (void)curl;
    /* Decrypted records are wiped once read, and idle connections hold no record buffers:
     * a kept-alive upstream connection keeps no response bytes. */
    SSL_CTX_set_options(ssl_ctx, PRIVACY_CLEANSE_PLAINTEXT);
    SSL_CTX_set_mode(ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
    if (s->upstream_cas != NULL) {
        X509_STORE *store = SSL_CTX_get_cert_store(ssl_ctx);
        for (int i = 0; i < sk_X509_num(s->upstream_cas); i++)
            X509_STORE_add_cert(store, sk_X509_value(s->upstream_cas, i)); /* a duplicate is harmless */
        ERR_clear_error();
    }
    return CURLE_OK;
}

void server_curl_tls_setup(server_t *s, CURL *easy)
{
    curl_easy_setopt(easy, CURLOPT_SSL_CTX_FUNCTION, on_curl_ssl_ctx);
    curl_easy_setopt(easy, CURLOPT_SSL_CTX_DATA, s);
}

void server_publish(server_t *s, snapshot_t *snap)
{
    for (int i = 0; i < s->n_workers; i++) {
        snapshot_retain(snap);
        send_msg(&s->workers[i].receiver, MSG_SNAPSHOT, snap);
    }
}

int server_reload_tls(server_t *s, char *err, size_t errlen)
{
    SSL_CTX *ssl = tls_context_new(s->cfg, err, errlen);
    if (ssl == NULL)
        return -EINVAL;
    for (int i = 0; i < s->n_workers; i++) {
        SSL_CTX_up_ref(ssl);
        send_msg(&s->workers[i].receiver, MSG_TLS, ssl);
    }
    SSL_CTX_free(ssl);
    return 0;
}

void server_drain(server_t *s, void (*cb)(server_t *s))
{
    s->drained_cb = cb;
    for (int i = 0; i < s->n_workers; i++)
        send_msg(&s->workers[i].receiver, MSG_DRAIN, NULL);
}

void server_stop(server_t *s)
{
    for (int i = 0; i < s->n_workers; i++)
        send_msg(&s->workers[i].receiver, MSG_STOP, NULL);
    for (int i = 0; i < s->n_workers; i++)
        uv_sem_wait(&s->workers[i].stopped);
    /* The main receiver stays registered: the workers' last metadata batches are still in
     * its queue, for the main loop to store before the process exits. */
}
