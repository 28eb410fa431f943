/* upstream_curl.c — the libcurl backend of upstream.h: one easy handle per request on the
 * worker's curl multi (curl_uv), so connections are kept alive per worker. HTTP/1.1 only,
 * also over TLS: a kept-alive HTTP/2 connection keeps the last frames (content) in
 * nghttp2's and curl's connection buffers (docs/design-notes.md, "HTTP/1.1 to upstreams").
 *
 * Backpressure uses curl's pause: before handing a piece of body to the relay the write
 * callback asks `writable`; when the answer is no it returns CURL_WRITEFUNC_PAUSE without
 * consuming, and curl delivers the same bytes again after upstream_resume
 * (curl_easy_pause(CURLPAUSE_CONT), which may call the write callback synchronously).
 *
 * The easy handle is cleaned up (its buffers freed) after every request rather than reused:
 * a reused handle keeps the last response in its download buffer. The Authorization header
 * is wiped from curl's header list before the list is freed. */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/curl_uv.h"
#include "node/server.h"
#include "node/upstream_impl.h"

typedef struct upstream_curl {
    upstream_t base;
    worker_t *worker;
    CURL *easy;
    struct curl_slist *headers;
    char *url;
    const upstream_cbs_t *cbs;
    void *data;
    bool got_head, paused, aborted;
} upstream_curl_t;

static void wipe_headers(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l != NULL; l = l->next)
        explicit_bzero(l->data, strlen(l->data));
    curl_slist_free_all(list);
}

static void upstream_curl_free(upstream_curl_t *u)
{
    if (u->easy != NULL)
        curl_easy_cleanup(u->easy);
    wipe_headers(u->headers);
    free(u->url);
    free(u);
}

static int on_prereq(void *data, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    upstream_curl_t *u = data;
    (void)primary_ip, (void)local_ip, (void)primary_port, (void)local_port;
    u->cbs->on_sent(u->data);
    return CURL_PREREQFUNC_OK;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *data)
{
    upstream_curl_t *u = data;
    size_t len = size * nmemb;
    if (!u->got_head) {
        u->got_head = true;
        long code = 0;
        char *ct = NULL;
        curl_easy_getinfo(u->easy, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_getinfo(u->easy, CURLINFO_CONTENT_TYPE, &ct);
        u->cbs->on_head(u->data, (int)code, ct, ct != NULL ? strlen(ct) : 0);
    }
    if (!u->cbs->writable(u->data)) {
        u->paused = true;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (len > 0 && u->cbs->on_body(u->data, (const uint8_t *)ptr, len) != 0) {
        u->aborted = true;
        return 0;
    }
    return len;
}

static int error_of(upstream_curl_t *u, CURLcode result)
{
    switch (result) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return -ECONNREFUSED;
    case CURLE_WRITE_ERROR:
        return u->aborted ? -ECANCELED : -EIO;
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_GOT_NOTHING:
        return u->got_head ? -EIO : -ECONNREFUSED;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
        return -ECONNREFUSED;
    default:
        return -EPROTO;
    }
}

static void on_done(CURL *easy, CURLcode result, void *data)
{
    upstream_curl_t *u = data;
    (void)easy;
    const upstream_cbs_t *cbs = u->cbs;
    void *cb_data = u->data;
    int error = error_of(u, result);
    upstream_curl_free(u);
    cbs->on_done(cb_data, error);
}

static void curl_resume(upstream_t *base)
{
    upstream_curl_t *u = (upstream_curl_t *)base;
    if (!u->paused)
        return;
    u->paused = false;
    curl_easy_pause(u->easy, CURLPAUSE_CONT);
}

static void curl_cancel(upstream_t *base)
{
    upstream_curl_t *u = (upstream_curl_t *)base;
    curl_uv_remove(u->worker->curl, u->easy);
    upstream_curl_free(u);
}

static const upstream_vtable_t curl_vtable = {"curl", curl_resume, curl_cancel};

int upstream_curl_start(worker_t *w, const upstream_request_t *req, const upstream_cbs_t *cbs, void *data,
                        upstream_t **out)
{
    const llmrelay_config_t *cfg = w->server->cfg;
    upstream_curl_t *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return -ENOMEM;
    u->base.vt = &curl_vtable;
    u->worker = w;
    u->cbs = cbs;
    u->data = data;
    u->url = strdup(req->url);
    u->easy = curl_easy_init();
    size_t alen = strlen(req->api_key) + 32;
    char *auth = malloc(alen);
    if (u->url == NULL || u->easy == NULL || auth == NULL) {
        free(auth);
        upstream_curl_free(u);
        return -ENOMEM;
    }
    snprintf(auth, alen, "%s%s", upstream_auth_prefix(req->auth), req->api_key);
    u->headers = curl_slist_append(u->headers, auth);
    explicit_bzero(auth, alen);
    free(auth);
    if (upstream_auth_extra(req->auth) != NULL)
        u->headers = curl_slist_append(u->headers, upstream_auth_extra(req->auth));
    u->headers = curl_slist_append(u->headers, "Content-Type: application/json");
    u->headers = curl_slist_append(u->headers, req->stream ? "Accept: text/event-stream" : "Accept: application/json");
    u->headers = curl_slist_append(u->headers, "Expect:");
    u->headers = curl_slist_append(u->headers, "User-Agent: llmrelay/" LLMRELAY_VERSION);

    CURL *e = u->easy;
    curl_easy_setopt(e, CURLOPT_URL, u->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, u->headers);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, (const char *)req->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, u);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, u);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->upstream_connect_timeout_ms);
    /* HTTP/1.1, not HTTP/2: on a kept-alive HTTP/2 connection nghttp2's frame buffer and
     * curl's connection input buffer keep the last request body and the last response
     * bytes until the connection is used again or closed (the canary test finds them); an
     * HTTP/1.1 transfer's buffers belong to the easy handle, freed (and wiped by the wiping
     * free, node/wipefree.c) when it is cleaned up. */
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    /* No CURLOPT_PIPEWAIT: on HTTP/1.1 a transfer would wait behind one whose client
     * paused it. */
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    server_curl_tls_setup(w->server, e);
    int ret = curl_uv_add(w->curl, e, on_done, u);
    if (ret != 0) {
        upstream_curl_free(u);
        return ret;
    }
    *out = &u->base;
    return 0;
}
