/* relay.c — one client request relayed to an OpenAI-format upstream and back.
 *
 * A request is checked in order (key, body size, JSON, model, allowlist), its body is
 * rewritten for the upstream (model alias, stream_options.include_usage, store:false), and
 * an upstream request is started (upstream.h: libcurl, or h2o's HTTP/1.1 client for
 * cleartext upstreams). The answer streams back as it arrives: each piece of body is
 * appended to `pending`, which is handed to h2o as soon as h2o has finished with the
 * previous piece (two buffers, as h2o's own proxy does; exactly one h2o_send per proceed).
 * When `pending` reaches RELAY_PAUSE_AT the relay answers `writable` with no and the
 * upstream holds its data; proceed sends what is pending and resumes it, so a slow client
 * slows the upstream and memory per stream stays bounded.
 *
 * Usage is read on the fly, never from a whole buffered body: SSE answers are cut into
 * events (the usage-only chat chunk the relay asked for is dropped unless the client
 * asked for it too), JSON answers go through a streaming scanner. If the client leaves
 * before the end, the transfer goes on, parsed but not buffered, until the usage has been
 * seen or --usage-drain-timeout passes; only then is usage estimated (and marked so).
 *
 * Lifetime: a relay_t lives on the heap, not in the request pool, because it can outlive
 * the request (draining). It is freed when both the request is gone (pool disposed) and
 * the transfer is over, after its timer handle has closed. Every buffer that held content
 * is wiped as it is freed (wipe_buf). */
#include "node/relay.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "node/errors.h"
#include "node/log.h"
#include "node/metering.h"
#include "node/metrics.h"
#include "node/reqjson.h"
#include "node/server.h"
#include "node/snapshot.h"
#include "node/sse.h"
#include "node/upstream.h"
#include "node/usage.h"
#include "node/util.h"
#include "node/wipe.h"

typedef struct endpoint {
    const char *path;     /* client path */
    const char *upstream; /* suffix appended to the provider's base URL */
    const char *name;     /* endpoint name in the metadata record */
    reqjson_endpoint_t kind;
    metrics_endpoint_t metric;
} endpoint_t;

static const endpoint_t endpoints[] = {
    {"/v1/chat/completions", "/chat/completions", "chat.completions", REQJSON_CHAT, METRICS_EP_CHAT_COMPLETIONS},
    {"/v1/completions", "/completions", "completions", REQJSON_COMPLETIONS, METRICS_EP_COMPLETIONS},
    {"/v1/embeddings", "/embeddings", "embeddings", REQJSON_EMBEDDINGS, METRICS_EP_EMBEDDINGS},
    {"/v1/responses", "/responses", "responses", REQJSON_RESPONSES, METRICS_EP_RESPONSES},
};
static const endpoint_t models_endpoint = {"/v1/models", NULL, "models", REQJSON_CHAT, METRICS_EP_MODELS};

typedef struct relay relay_t;

#define RELAY_PARTIAL_SETTLE_MS 1000

/* Lives in the request pool; its dispose callback tells the relay the request is gone. */
typedef struct relay_link {
    relay_t *relay;
} relay_link_t;

struct relay {
    h2o_generator_t generator; /* first: h2o hands it back to proceed/stop */
    relay_t *cache_next;       /* on the worker's cache of finished relays */
    worker_t *worker;
    h2o_req_t *req; /* NULL once the client is gone (stopped or disposed) */
    relay_link_t *link;
    h2o_conn_t *conn;
    int http_version;
    snapshot_t *snap;
    const snapshot_key_t *key;
    const snapshot_model_t *model;
    const snapshot_route_t *route;
    const endpoint_t *ep;
    bool stream_counted; /* counted in the open-streams gauge */
    /* Metering: the reservation (worst case) and the decision that admitted or refused. */
    meter_waiter_t waiter;
    bool waiting_quota, admitted;
    quota_usage_t worst;
    quota_decision_t decision;
    bool has_decision;
    int64_t force_max_output; /* > 0: set this output limit upstream so the reservation holds */
    char quota_id[48];        /* the relay's own id of the request for settles (never the client's) */
    reqjson_info_t info;
    bool client_wants_usage;

    wipe_buf_t body;   /* request body as sent upstream */
    char *url;
    upstream_t *up;    /* NULL once the upstream request is over */
    bool start_pending; /* the upstream request starts at the end of this loop iteration */
    relay_t *start_next;   /* on the worker's queue of relays to start */
    relay_t *release_next; /* on the worker's list of finished relays to recycle */
    relay_t *flush_next;   /* on the worker's list of relays to flush */
    bool flush_queued;
    bool request_sent;  /* the request is about to leave (or has left) for the upstream */
    bool upstream_over;
    int error; /* the upstream request's end: 0 or a negative errno (upstream.h) */
    bool timed_out;

    bool got_first_byte, started, final_sent, sending, paused, in_upstream_cb;
    int status;
    bool sse;
    wipe_buf_t pending, inflight;
    /* Cluster mode: the final settle must be acknowledged before the response ends; until
     * then the end and the closing bytes (a stream's [DONE] event, a body's last byte: kept
     * in tail) are held. */
    meter_hold_t hold;
    bool settle_held;
    wipe_buf_t tail;
    uint32_t events;     /* stream data events forwarded (a partial settle's estimate) */
    uint64_t partial_ms; /* last partial settle (cluster mode: one a second) */
    sse_parser_t sse_parser;
    usage_scan_t *scan;
    usage_t usage;
    size_t output_bytes;

    uv_timer_t timer;
    uint64_t start_ms, start_ms_upstream, last_activity_ms, drain_deadline_ms;
    int64_t ts_ms, ttfb_ms;
    bool logged;
    char request_id[65];
};

/* ---- request helpers ---------------------------------------------------------------- */

static void request_id_for(worker_t *w, h2o_req_t *req, char out[65])
{
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("x-request-id"), -1);
    if (i >= 0) {
        h2o_iovec_t v = req->headers.entries[i].value;
        if (util_request_id_sane(v.base, v.len)) {
            memcpy(out, v.base, v.len);
            out[v.len] = '\0';
            return;
        }
    }
    util_hex64(worker_rand(w), out);
    util_hex64(worker_rand(w), out + 16);
    out[32] = '\0';
}

/* The relay key from `Authorization: Bearer`; NULL when absent. */
static const char *bearer_token(h2o_req_t *req, size_t *len)
{
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (i < 0)
        return NULL;
    h2o_iovec_t v = req->headers.entries[i].value;
    if (v.len < 7 || strncasecmp(v.base, "Bearer ", 7) != 0)
        return NULL;
    const char *p = v.base + 7;
    size_t n = v.len - 7;
    while (n > 0 && *p == ' ')
        p++, n--;
    while (n > 0 && p[n - 1] == ' ')
        n--;
    *len = n;
    return n > 0 ? p : NULL;
}

/* Every answer carries the metadata record, errors included. */
/* The metrics of one finished request (model NULL: none recognised). */
static void record_metrics(worker_t *w, const snapshot_t *snap, const snapshot_model_t *model,
                           metrics_endpoint_t endpoint, int status, const usage_t *u, int64_t latency_ms,
                           int64_t ttfb_ms)
{
    const metrics_names_t *names = snap != NULL ? snap->attached : NULL;
    metrics_request_t m = {
        .endpoint = endpoint,
        .model = names != NULL && model != NULL ? metrics_names_model_at(names, (size_t)(model - snap->models))
                                                : METRICS_MODEL_OTHER,
        .status = status,
        .input_tokens = u != NULL ? u->input_tokens : -1,
        .output_tokens = u != NULL ? u->output_tokens : -1,
        .cached_input_tokens = u != NULL ? u->cached_input_tokens : -1,
        .reasoning_tokens = u != NULL ? u->reasoning_tokens : -1,
        .duration_us = latency_ms * 1000,
        .ttfb_us = ttfb_ms >= 0 ? ttfb_ms * 1000 : -1,
    };
    metrics_record_request(w->metrics, &m);
}

/* Metadata record and metrics of a request answered without an upstream call. */
static void log_early(worker_t *w, const char *request_id, const snapshot_key_t *key, const snapshot_model_t *model,
                      const endpoint_t *ep, int status, int64_t ts_ms, uint64_t start_ms)
{
    int64_t latency_ms = (int64_t)(uv_now(&w->loop) - start_ms);
    log_record_t rec = {
        .ts_ms = ts_ms,
        .request_id = request_id,
        .node = w->server->cfg->name,
        .key_id = key != NULL ? key->id : "",
        .model = model != NULL ? model->name : "",
        .endpoint = ep->name,
        .provider = "",
        .status = status,
        .latency_ms = latency_ms,
        .ttfb_ms = -1,
    };
    worker_log_record(w, &rec);
    record_metrics(w, w->snapshot, model, ep->metric, status, NULL, latency_ms, -1);
}

static void send_error(h2o_req_t *req, const char *request_id, int status, const char *code, const char *message)
{
    errors_openai_send(req, status, code, message, request_id);
}

/* Authenticates the request. Returns the key, or NULL after answering 401/503. */
static const snapshot_key_t *authenticate(worker_t *w, h2o_req_t *req, const char *request_id)
{
    if (w->snapshot == NULL) {
        send_error(req, request_id, 503, "unavailable", "the relay has no configuration yet");
        return NULL;
    }
    size_t len = 0;
    const char *token = bearer_token(req, &len);
    if (token == NULL) {
        send_error(req, request_id, 401, "invalid_api_key",
                   "Missing API key: pass it in the Authorization header as 'Bearer <key>'.");
        return NULL;
    }
    uint8_t hash[32];
    util_sha256(token, len, hash);
    const snapshot_key_t *key = snapshot_find_key(w->snapshot, hash);
    if (key == NULL || key->revoked) {
        send_error(req, request_id, 401, "invalid_api_key", "Incorrect or revoked API key provided.");
        return NULL;
    }
    int64_t now_s = clock_now_ms(w->server->clock) / 1000;
    if (key->grace_until != 0 && key->grace_until <= now_s) {
        send_error(req, request_id, 401, "invalid_api_key", "This API key was rotated and its grace period is over.");
        return NULL;
    }
    if (key->expires_at != 0 && key->expires_at <= now_s) {
        send_error(req, request_id, 401, "invalid_api_key", "This API key has expired.");
        return NULL;
    }
    return key;
}

static void add_header(h2o_req_t *req, const char *name, const char *value, size_t len)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, name, strlen(name), 0, NULL, value, len);
}

/* "250ms" below a second, else "1.250s" (OpenAI's reset durations); no printf on the
 * request path. buf holds at least 32 bytes. */
static size_t format_reset(char buf[32], uint64_t ms)
{
    if (ms < 1000) {
        size_t n = util_u64_dec(ms, buf);
        memcpy(buf + n, "ms", 3);
        return n + 2;
    }
    size_t n = util_u64_dec(ms / 1000, buf);
    unsigned frac = (unsigned)(ms % 1000);
    buf[n++] = '.';
    buf[n++] = (char)('0' + frac / 100);
    buf[n++] = (char)('0' + frac / 10 % 10);
    buf[n++] = (char)('0' + frac % 10);
    buf[n++] = 's';
    buf[n] = '\0';
    return n;
}

/* OpenAI's x-ratelimit-* headers with the key's live values; -1 where the key has no such
 * limit (then there is no reset either). */
static void add_count_header(h2o_req_t *req, const char *name, int64_t value)
{
    if (value < 0) {
        add_header(req, name, "-1", 2); /* no such limit: a constant, no formatting */
        return;
    }
    char *v = h2o_mem_alloc_pool(&req->pool, 21);
    size_t n = util_u64_dec((uint64_t)value, v);
    add_header(req, name, v, n);
}

static void add_ratelimit_headers(h2o_req_t *req, const quota_decision_t *d)
{
    bool has_req = d->limit_requests >= 0, has_tok = d->limit_tokens >= 0;
    add_count_header(req, "x-ratelimit-limit-requests", has_req ? d->limit_requests : -1);
    add_count_header(req, "x-ratelimit-remaining-requests",
                     has_req ? (d->remaining_requests > 0 ? d->remaining_requests : 0) : -1);
    add_count_header(req, "x-ratelimit-limit-tokens", has_tok ? d->limit_tokens : -1);
    add_count_header(req, "x-ratelimit-remaining-tokens",
                     has_tok ? (d->remaining_tokens > 0 ? d->remaining_tokens : 0) : -1);
    char v[32];
    size_t n;
    if (has_req) {
        n = format_reset(v, d->reset_requests_ms);
        add_header(req, "x-ratelimit-reset-requests", h2o_strdup(&req->pool, v, n).base, n);
    }
    if (has_tok) {
        n = format_reset(v, d->reset_tokens_ms);
        add_header(req, "x-ratelimit-reset-tokens", h2o_strdup(&req->pool, v, n).base, n);
    }
}

/* The headers of an answer to a known key that made no admission (errors, /v1/models). */
static void add_key_ratelimit_headers(worker_t *w, h2o_req_t *req, const snapshot_key_t *key)
{
    quota_decision_t d;
    meter_peek(w, key, &d);
    add_ratelimit_headers(req, &d);
}

/* ---- GET /v1/models ------------------------------------------------------------------ */

static void serve_models(worker_t *w, h2o_req_t *req, const snapshot_key_t *key, const char *request_id)
{
    const snapshot_t *s = w->snapshot;
    size_t cap = 64;
    for (size_t i = 0; i < s->n_models; i++)
        cap += strlen(s->models[i].name) * 2 + strlen(s->models[i].routes[0].provider) * 2 + 96;
    char *body = h2o_mem_alloc_pool(&req->pool, cap);
    size_t n = (size_t)snprintf(body, cap, "{\"object\":\"list\",\"data\":[");
    bool first = true;
    for (size_t i = 0; i < s->n_models; i++) {
        const snapshot_model_t *m = &s->models[i];
        if (!snapshot_key_allows(key, m->name))
            continue;
        /* Model and provider names are validated by the admin API to safe characters. */
        n += (size_t)snprintf(body + n, cap - n,
                              "%s{\"id\":\"%s\",\"object\":\"model\",\"created\":0,\"owned_by\":\"%s\"}",
                              first ? "" : ",", m->name, m->routes[0].provider);
        first = false;
    }
    n += (size_t)snprintf(body + n, cap - n, "]}\n");
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    add_header(req, "x-request-id", request_id, strlen(request_id));
    h2o_send_inline(req, body, n);
}

/* ---- the relay's end ----------------------------------------------------------------- */

/* Finished relays are kept on a per-worker list for the next requests (up to
 * RELAY_CACHE_MAX), together with their timer handle and, when it is small, their body
 * buffer: a relay (1.4 KB) and its body buffer are past the sizes glibc's per-thread cache
 * takes, so each request otherwise paid two trips through the arena's bins, and closing
 * the timer handle cost each request an extra turn of the event loop (libuv polls without
 * waiting while a handle is closing). A kept relay is zeroed (all but its idle timer
 * handle) and its body buffer wiped whole: it holds nothing of the request it served. */
#define RELAY_CACHE_MAX 64
#define RELAY_CACHE_BODY_MAX (16u << 10)

static relay_t *relay_alloc(worker_t *w)
{
    relay_t *r = w->relay_cache;
    if (r == NULL) {
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return NULL;
        uv_timer_init(&w->loop, &r->timer);
        r->timer.data = r;
        return r;
    }
    w->relay_cache = r->cache_next;
    w->relay_cache_n--;
    r->cache_next = NULL;
    return r; /* zero but for its timer handle, body.data and body.cap */
}

static void on_timer_closed(uv_handle_t *h)
{
    wipe_free(h->data);
}

/* Wipes a finished relay and keeps it for reuse, or frees it. */
static void relay_recycle(relay_t *r)
{
    worker_t *w = r->worker;
    bool keep = w->relay_cache_n < RELAY_CACHE_MAX && !w->draining;
    uint8_t *body = r->body.data;
    size_t cap = r->body.cap;
    if (body != NULL && (!keep || cap > RELAY_CACHE_BODY_MAX)) {
        wipe_buf_free(&r->body);
        body = NULL;
        cap = 0;
    }
    if (!keep) {
        uv_close((uv_handle_t *)&r->timer, on_timer_closed);
        return;
    }
    if (body != NULL)
        wipe_bytes(body, cap);
    /* memset, not wipe_bytes: a kept relay must read as zero even in a -DLLMRELAY_NO_WIPE
     * build (relay_alloc hands it out as calloc would) */
    size_t off = offsetof(relay_t, timer), end = off + sizeof(r->timer);
    memset(r, 0, off);
    memset((char *)r + end, 0, sizeof(*r) - end);
    r->body.data = body;
    r->body.cap = cap;
    r->cache_next = w->relay_cache;
    w->relay_cache = r;
    w->relay_cache_n++;
}

static void start_queued(worker_t *w);
static void flush(relay_t *r);

/* The worker's check handle (libuv's check phase follows the poll phase of every loop
 * iteration): starts the upstream requests queued in this iteration (queue_start), sends
 * what upstream reads of this iteration left to send (queue_flush), then recycles the
 * relays finished in it. A finished relay stays intact until then, because
 * callers up the stack and the start queue may still look at it. Created on first use,
 * unreferenced (it never keeps the loop alive). */
static void on_worker_check(uv_check_t *h)
{
    worker_t *w = h->data;
    start_queued(w);
    meter_worker_flush(w);
    while (w->flush_head != NULL) {
        relay_t *r = w->flush_head;
        w->flush_head = r->flush_next;
        r->flush_next = NULL;
        r->flush_queued = false;
        flush(r);
    }
    while (w->release_head != NULL) {
        relay_t *r = w->release_head;
        w->release_head = r->release_next;
        relay_recycle(r);
    }
}

static void ensure_check(worker_t *w)
{
    if (w->start_check_ready)
        return;
    uv_check_init(&w->loop, &w->start_check);
    w->start_check.data = w;
    uv_check_start(&w->start_check, on_worker_check);
    uv_unref((uv_handle_t *)&w->start_check);
    w->start_check_ready = true;
}

/* Upstream bytes are sent to the client once per loop iteration rather than per piece:
 * an answer that arrives whole in one read then leaves with its end in one HTTP/2 write
 * (HEADERS, DATA and END_STREAM together) instead of a second write for the end alone;
 * events of one read leave together. */
static void queue_flush(relay_t *r)
{
    if (r->flush_queued)
        return;
    worker_t *w = r->worker;
    ensure_check(w);
    r->flush_queued = true;
    r->flush_next = w->flush_head;
    w->flush_head = r;
}

static void relay_maybe_free(relay_t *r)
{
    if (r->link != NULL || !r->upstream_over)
        return;
    assert(r->logged);
    wipe_buf_free(&r->pending);
    wipe_buf_free(&r->inflight);
    wipe_buf_free(&r->tail);
    wipe_buf_reset(&r->body); /* kept with the relay (relay_recycle) */
    sse_parser_dispose(&r->sse_parser);
    if (r->scan != NULL)
        usage_scan_free(r->scan);
    r->scan = NULL;
    snapshot_release(r->snap);
    r->snap = NULL;
    free(r->url);
    r->url = NULL;
    uv_timer_stop(&r->timer);
    worker_t *w = r->worker;
    ensure_check(w);
    r->release_next = w->release_head;
    w->release_head = r;
}

/* USD of a usage at the model's price, in nano-USD (0 without a price). Cached input and
 * reasoning tokens are part of the input and output counts; each is priced at its own rate. */
static int64_t cost_nanousd(const snapshot_t *snap, const snapshot_model_t *model, const usage_t *u)
{
    const snapshot_price_t *p = model != NULL ? snapshot_find_price(snap, model->name) : NULL;
    if (p == NULL)
        return 0;
    int64_t cached = u->cached_input_tokens < u->input_tokens ? u->cached_input_tokens : u->input_tokens;
    int64_t reasoning = u->reasoning_tokens < u->output_tokens ? u->reasoning_tokens : u->output_tokens;
    /* USD per 1M tokens = nano-USD per 1e-3 token: nano-USD = tokens * price * 1000. */
    double nano = ((double)(u->input_tokens - cached) * p->input + (double)cached * p->cached_input +
                   (double)(u->output_tokens - reasoning) * p->output + (double)reasoning * p->reasoning) *
                  1000.0;
    return (int64_t)(nano + 0.5);
}

/* The worst case of a request: every prompt byte a token (a tokenizer never yields more
 * tokens than bytes) plus the output bound, at the dearest of the model's rates. */
static quota_usage_t worst_case(const snapshot_t *snap, const snapshot_model_t *model, int64_t input_bound,
                                int64_t output_bound)
{
    quota_usage_t w = {input_bound + output_bound, 0};
    const snapshot_price_t *p = snapshot_find_price(snap, model->name);
    if (p != NULL) {
        double in = p->input > p->cached_input ? p->input : p->cached_input;
        double out = p->output > p->reasoning ? p->output : p->reasoning;
        w.nanousd = (int64_t)(((double)input_bound * in + (double)output_bound * out) * 1000.0) + 1;
    }
    return w;
}

static void on_settle_acked(meter_hold_t *h, bool acked)
{
    relay_t *r = H2O_STRUCT_FROM_MEMBER(relay_t, hold, h);
    (void)acked;
    r->settle_held = false;
    queue_flush(r);
}

/* The transfer is over (finished, failed, cancelled): settle usage and write the record. */
static void relay_upstream_over(relay_t *r)
{
    assert(!r->upstream_over);
    r->upstream_over = true;
    uv_timer_stop(&r->timer);
    r->up = NULL;
    wipe_buf_reset(&r->body);

    if (r->scan != NULL && !r->usage.found) {
        usage_t u;
        if (usage_scan_finish(r->scan, &u) == 0 && u.found)
            r->usage = u;
    }
    bool ok_status = r->status >= 200 && r->status < 300;
    bool estimated = false;
    usage_t u = r->usage;
    if (!u.found && ok_status && r->got_first_byte) {
        usage_estimate(r->info.prompt_bytes, r->output_bytes, &u);
        estimated = true;
    } else if (!u.found) {
        memset(&u, 0, sizeof(u));
    }
    int64_t nanousd = cost_nanousd(r->snap, r->model, &u);
    if (r->admitted && !snapshot_key_metered(r->key)) {
        meter_count(r->worker, r->key, (quota_usage_t){u.input_tokens + u.output_tokens, nanousd}, u.input_tokens,
                    u.output_tokens);
    } else if (r->admitted) {
        quota_usage_t actual = {u.input_tokens + u.output_tokens, nanousd};
        if (estimated) {
            /* An estimate is no measurement: never bill it above the reservation. */
            actual.tokens = actual.tokens < r->worst.tokens ? actual.tokens : r->worst.tokens;
            actual.nanousd = actual.nanousd < r->worst.nanousd ? actual.nanousd : r->worst.nanousd;
        }
        if (meter_settle(r->worker, r->key, r->quota_id, actual, u.input_tokens, u.output_tokens,
                         r->req != NULL && !r->final_sent ? &r->hold : NULL, on_settle_acked)) {
            r->settle_held = true;
            ensure_check(r->worker); /* the report leaves in this iteration's check phase */
        }
    }
    log_record_t rec = {
        .ts_ms = r->ts_ms,
        .request_id = r->request_id,
        .node = r->worker->server->cfg->name,
        .key_id = r->key->id,
        .model = r->info.model,
        .endpoint = r->ep->name,
        .provider = r->route->provider,
        .status = r->status,
        .input_tokens = u.input_tokens,
        .cached_input_tokens = u.cached_input_tokens,
        .output_tokens = u.output_tokens,
        .reasoning_tokens = u.reasoning_tokens,
        .usd = (double)nanousd / 1e9,
        .latency_ms = (int64_t)(uv_now(&r->worker->loop) - r->start_ms),
        .ttfb_ms = r->ttfb_ms,
        .stream = r->info.stream,
        .estimated = estimated,
    };
    worker_log_record(r->worker, &rec);
    record_metrics(r->worker, r->snap, r->model, r->ep->metric, r->status, &u, rec.latency_ms, r->ttfb_ms);
    if (r->stream_counted)
        metrics_stream_closed(r->worker->metrics);
    r->logged = true;
    server_relay_finished(r->worker);
}

static void send_pending(relay_t *r, h2o_send_state_t state)
{
    assert(r->req != NULL && !r->sending && !r->final_sent);
    wipe_buf_t t = r->inflight;
    r->inflight = r->pending;
    r->pending = t;
    wipe_buf_reset(&r->pending);
    h2o_iovec_t buf = h2o_iovec_init(r->inflight.data, r->inflight.len);
    if (state != H2O_SEND_STATE_IN_PROGRESS)
        r->final_sent = true;
    else
        r->sending = true;
    h2o_send(r->req, &buf, buf.len > 0 ? 1 : 0, state);
}

/* Sends what can be sent now: pending bytes, and the end once the upstream is over. */
static void flush(relay_t *r)
{
    if (r->req == NULL || !r->started || r->sending || r->final_sent)
        return;
    if (r->upstream_over) {
        if (r->settle_held)
            return; /* the end leaves once the owner holds the final settle */
        if (r->tail.len > 0 && wipe_buf_append(&r->pending, r->tail.data, r->tail.len) != 0)
            r->error = -ENOMEM;
        wipe_buf_reset(&r->tail);
        h2o_send_state_t st = r->error == 0 && !r->timed_out ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_ERROR;
        send_pending(r, st);
    } else if (r->pending.len > 0) {
        send_pending(r, H2O_SEND_STATE_IN_PROGRESS);
    }
}

static void cancel_transfer(relay_t *r, bool timeout);

/* The client is gone: keep reading the upstream, unbuffered, to learn the usage. */
static void client_gone(relay_t *r)
{
    if (r->req == NULL)
        return;
    bool complete = r->final_sent;
    r->req = NULL;
    r->sending = false;
    wipe_buf_free(&r->pending);
    wipe_buf_free(&r->inflight);
    wipe_buf_free(&r->tail);
    if (r->settle_held) {
        meter_hold_cancel(r->worker, &r->hold);
        r->settle_held = false;
    }
    if (!complete)
        server_count_reset(r->worker, r->conn, r->http_version);
    if (r->upstream_over)
        return;
    if (r->waiting_quota) {
        meter_cancel_wait(&r->waiter);
        r->waiting_quota = false;
        r->status = 499;
        relay_upstream_over(r);
        return;
    }
    if (r->start_pending) {
        r->start_pending = false;
        r->status = 499;
        relay_upstream_over(r);
        return;
    }
    if (!r->request_sent) {
        /* Nothing reached the upstream yet (a stream reset right after it was opened):
         * there is no usage to learn, so no upstream work is done at all. */
        cancel_transfer(r, false);
        return;
    }
    uint64_t now = uv_now(&r->worker->loop);
    r->drain_deadline_ms = now + r->worker->server->cfg->usage_drain_timeout_ms;
    if (r->paused) {
        r->paused = false;
        upstream_resume(r->up);
    }
}

static void on_generator_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    relay_t *r = (relay_t *)gen;
    (void)req;
    r->sending = false;
    wipe_buf_reset(&r->inflight);
    flush(r);
    if (r->paused && !r->in_upstream_cb && !r->upstream_over && r->pending.len < RELAY_PAUSE_AT) {
        /* Send first, resume last: resuming may deliver held data synchronously. */
        r->paused = false;
        r->last_activity_ms = uv_now(&r->worker->loop);
        upstream_resume(r->up);
    }
}

static void on_generator_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    client_gone((relay_t *)gen);
}

static void on_link_dispose(void *p)
{
    relay_link_t *link = p;
    relay_t *r = link->relay;
    if (r == NULL)
        return;
    client_gone(r);
    r->link = NULL;
    if (r->up != NULL && r->worker->server->cfg->usage_drain_timeout_ms == 0)
        cancel_transfer(r, false);
    relay_maybe_free(r);
}

/* ---- upstream answer ------------------------------------------------------------------ */

static void start_response(relay_t *r, const char *content_type, size_t ct_len)
{
    h2o_req_t *req = r->req;
    req->res.status = r->status;
    req->res.reason = "OK";
    if (content_type != NULL && ct_len > 0) {
        char *copy = h2o_mem_alloc_pool(&req->pool, ct_len);
        memcpy(copy, content_type, ct_len);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, copy, ct_len);
    }
    if (r->sse)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-cache"));
    add_header(req, "x-request-id", r->request_id, strlen(r->request_id));
    if (r->has_decision)
        add_ratelimit_headers(req, &r->decision);
    r->generator.proceed = on_generator_proceed;
    r->generator.stop = on_generator_stop;
    r->started = true;
    h2o_start_response(req, &r->generator);
}

static void on_upstream_sent(void *data)
{
    ((relay_t *)data)->request_sent = true;
}

static void on_upstream_head(void *data, int status, const char *content_type, size_t ct_len)
{
    relay_t *r = data;
    r->got_first_byte = true;
    r->ttfb_ms = (int64_t)(uv_now(&r->worker->loop) - r->start_ms);
    r->last_activity_ms = uv_now(&r->worker->loop);
    r->status = status;
    bool ok = status >= 200 && status < 300;
    r->sse = ok && content_type != NULL && ct_len >= 17 && strncasecmp(content_type, "text/event-stream", 17) == 0;
    if (ok && !r->sse)
        usage_scan_init(&r->scan);
    if (r->sse) {
        r->stream_counted = true;
        metrics_stream_opened(r->worker->metrics);
    }
    if (!ok && (status >= 500 || status == 429)) {
        const metrics_names_t *names = r->snap->attached;
        if (names != NULL)
            metrics_record_upstream_error(r->worker->metrics,
                                          metrics_names_provider(names, r->route->provider, strlen(r->route->provider)),
                                          status == 429 ? METRICS_UPSTREAM_STATUS_429 : METRICS_UPSTREAM_STATUS_5XX);
    }
    if (r->req != NULL)
        start_response(r, content_type, ct_len);
}

static int on_sse_event(void *data, const sse_event_t *ev)
{
    relay_t *r = data;
    bool forward = true;
    if (ev->has_data && ev->data_len > 0 && !(ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0)) {
        usage_t u;
        if (r->ep->kind == REQJSON_RESPONSES) {
            bool terminal = false;
            if (usage_from_responses_event(ev->data, ev->data_len, &u, &terminal) == 0 && u.found)
                r->usage = u;
        } else {
            bool usage_only = false;
            if (usage_from_chat_chunk(ev->data, ev->data_len, &u, &usage_only) == 0 && u.found)
                r->usage = u;
            if (usage_only && !r->client_wants_usage)
                forward = false;
        }
        r->output_bytes += ev->data_len;
        r->events++;
    }
    if (forward && r->req != NULL) {
        /* In a cluster the closing [DONE] waits with the response's end for the settle. */
        bool closing = ev->has_data && ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0 &&
                       atomic_load(&r->worker->server->clustered) && r->admitted && snapshot_key_metered(r->key);
        return wipe_buf_append(closing ? &r->tail : &r->pending, ev->raw, ev->raw_len) == 0 ? 0 : -ENOMEM;
    }
    return 0;
}

static bool on_upstream_writable(void *data)
{
    relay_t *r = data;
    if (r->req != NULL && r->pending.len >= RELAY_PAUSE_AT) {
        r->paused = true;
        return false;
    }
    return true;
}

static int on_upstream_body(void *data, const uint8_t *buf, size_t len)
{
    relay_t *r = data;
    r->last_activity_ms = uv_now(&r->worker->loop);
    r->in_upstream_cb = true;
    int err = 0;
    if (r->sse) {
        err = sse_parser_feed(&r->sse_parser, buf, len, on_sse_event, r);
    } else {
        if (r->scan != NULL)
            usage_scan_feed(r->scan, buf, len);
        r->output_bytes += len;
        if (r->req != NULL && len > 0 && atomic_load(&r->worker->server->clustered) && r->admitted &&
            snapshot_key_metered(r->key)) {
            /* In a cluster the body's last byte waits with its end for the settle: h2o ends a
             * stream by itself once content-length bytes went out. */
            err = wipe_buf_append(&r->pending, r->tail.data, r->tail.len);
            wipe_buf_reset(&r->tail);
            if (err == 0)
                err = wipe_buf_append(&r->pending, buf, len - 1);
            if (err == 0)
                err = wipe_buf_append(&r->tail, buf + len - 1, 1);
        } else if (r->req != NULL) {
            err = wipe_buf_append(&r->pending, buf, len);
        }
    }
    queue_flush(r);
    r->in_upstream_cb = false;
    if (err != 0)
        return err; /* an event over RELAY_MAX_EVENT or no memory: stop the upstream */
    /* A client that left: once the usage is known there is nothing more to learn. */
    if (r->req == NULL && r->usage.found)
        return 1;
    return 0;
}

static void on_upstream_done(void *data, int error)
{
    relay_t *r = data;
    r->up = NULL;
    r->error = error;
    if (r->sse && r->req != NULL)
        sse_parser_finish(&r->sse_parser, on_sse_event, r);
    const metrics_names_t *names = r->snap->attached;
    if (error != 0 && error != -ECANCELED && names != NULL)
        metrics_record_upstream_error(r->worker->metrics,
                                      metrics_names_provider(names, r->route->provider, strlen(r->route->provider)),
                                      error == -ETIMEDOUT || r->timed_out ? METRICS_UPSTREAM_TIMEOUT
                                      : !r->got_first_byte           ? METRICS_UPSTREAM_CONNECT
                                                                     : METRICS_UPSTREAM_PROTOCOL);
    if (!r->got_first_byte && r->req != NULL) {
        /* Nothing came back: answer in OpenAI's shape. */
        bool timeout = error == -ETIMEDOUT || r->timed_out;
        r->status = timeout ? 504 : 502;
        r->final_sent = true;
        log_info("request %s: upstream %s failed: %s", r->request_id, r->route->provider,
                 timeout ? "timed out" : strerror(-error));
        if (r->has_decision)
            add_ratelimit_headers(r->req, &r->decision);
        send_error(r->req, r->request_id, r->status, timeout ? "upstream_timeout" : "upstream_error",
                   timeout ? "The upstream provider did not answer in time."
                           : "The upstream provider could not be reached.");
    } else if (!r->got_first_byte) {
        r->status = 499; /* the client left before the upstream answered */
    } else if (error == -ECANCELED && r->req == NULL && r->usage.found) {
        r->error = 0; /* stopped reading on purpose once the usage was known */
    }
    relay_upstream_over(r);
    flush(r);
    relay_maybe_free(r);
}

static void cancel_transfer(relay_t *r, bool timeout)
{
    if (r->up == NULL)
        return;
    upstream_cancel(r->up);
    r->up = NULL;
    r->timed_out = timeout;
    on_upstream_done(r, timeout ? -ETIMEDOUT : -ECANCELED);
}

/* Answers an error the relay decided itself (no upstream answer reached the client) and
 * ends the relay: the record carries that status. */
static void relay_fail(relay_t *r, int status, const char *code, const char *message)
{
    r->status = status;
    r->final_sent = true;
    send_error(r->req, r->request_id, status, code, message);
    relay_upstream_over(r);
}

static void begin_upstream(relay_t *r);
static void queue_start(relay_t *r);
static void relay_admitted(relay_t *r, const quota_decision_t *d);
/* The worker's queue of relays whose upstream request starts in the check phase of this
 * loop iteration (on_worker_check): after the poll phase, so every frame read in it (a reset
 * of the same stream included) has been handled; a relay given up meanwhile
 * (start_pending cleared) is skipped. */
static void start_queued(worker_t *w)
{
    relay_t *r = w->start_head;
    w->start_head = w->start_tail = NULL;
    while (r != NULL) {
        relay_t *next = r->start_next;
        r->start_next = NULL;
        if (r->start_pending)
            begin_upstream(r);
        r = next;
    }
}

static void queue_start(relay_t *r)
{
    worker_t *w = r->worker;
    ensure_check(w);
    r->start_next = NULL;
    if (w->start_tail != NULL)
        w->start_tail->start_next = r;
    else
        w->start_head = r;
    w->start_tail = r;
}

static void on_quota_resolved(meter_waiter_t *waiter, const quota_decision_t *d);

static void on_timer(uv_timer_t *t)
{
    relay_t *r = t->data;
    const llmrelay_config_t *cfg = r->worker->server->cfg;
    uint64_t now = uv_now(&r->worker->loop), next;
    if (r->waiting_quota) {
        meter_cancel_wait(&r->waiter);
        r->waiting_quota = false;
        relay_fail(r, 503, "unavailable", "The quota service did not answer in time.");
        return;
    }
    if (r->req == NULL && r->drain_deadline_ms != 0 && now >= r->drain_deadline_ms) {
        cancel_transfer(r, false);
        return;
    }
    if (!r->got_first_byte) {
        uint64_t deadline = r->start_ms_upstream + cfg->upstream_first_byte_timeout_ms;
        if (now >= deadline) {
            log_info("request %s: no first byte from %s within %llu ms", r->request_id, r->route->provider,
                     (unsigned long long)cfg->upstream_first_byte_timeout_ms);
            cancel_transfer(r, true);
            return;
        }
        next = deadline - now;
    } else if (r->paused) {
        next = cfg->upstream_idle_timeout_ms; /* the client is slow, not the upstream */
    } else {
        uint64_t deadline = r->last_activity_ms + cfg->upstream_idle_timeout_ms;
        if (now >= deadline) {
            log_info("request %s: upstream %s idle for %llu ms", r->request_id, r->route->provider,
                     (unsigned long long)cfg->upstream_idle_timeout_ms);
            cancel_transfer(r, true);
            return;
        }
        next = deadline - now;
    }
    if (r->req == NULL && r->drain_deadline_ms != 0 && r->drain_deadline_ms - now < next)
        next = r->drain_deadline_ms - now;
    if (r->sse && r->got_first_byte && r->admitted && snapshot_key_metered(r->key) &&
        atomic_load(&r->worker->server->clustered)) {
        /* A long stream settles what it has delivered every second, so that the owner bills
         * it at that if this node dies: every content event counts one output token (a
         * lower bound: an event carries at least one), the first (role) event none. */
        if (now - r->partial_ms >= RELAY_PARTIAL_SETTLE_MS) {
            r->partial_ms = now;
            usage_t u;
            memset(&u, 0, sizeof(u));
            u.output_tokens = r->events > 1 ? r->events - 1 : 0;
            quota_usage_t so_far = {u.output_tokens, cost_nanousd(r->snap, r->model, &u)};
            so_far.tokens = so_far.tokens < r->worst.tokens ? so_far.tokens : r->worst.tokens;
            so_far.nanousd = so_far.nanousd < r->worst.nanousd ? so_far.nanousd : r->worst.nanousd;
            meter_settle_partial(r->worker, r->key, r->quota_id, so_far);
        }
        if (next > RELAY_PARTIAL_SETTLE_MS)
            next = RELAY_PARTIAL_SETTLE_MS;
    }
    uv_timer_start(&r->timer, on_timer, next, 0);
}

/* ---- starting a relay ------------------------------------------------------------------ */

static const snapshot_route_t *choose_route(worker_t *w, const snapshot_model_t *m)
{
    /* Highest priority first; weighted choice among the routes sharing it. Only OpenAI-type
     * providers are served by this node version. */
    int best = 0;
    bool any = false;
    uint64_t total = 0;
    for (size_t i = 0; i < m->n_routes; i++) {
        const snapshot_route_t *rt = &m->routes[i];
        if (strcmp(rt->type, "openai") != 0 || rt->n_api_keys == 0)
            continue;
        if (!any || rt->priority > best) {
            best = rt->priority;
            total = 0;
            any = true;
        }
        if (rt->priority == best)
            total += (uint64_t)rt->weight;
    }
    if (!any)
        return NULL;
    uint64_t pick = worker_rand(w) % total;
    for (size_t i = 0; i < m->n_routes; i++) {
        const snapshot_route_t *rt = &m->routes[i];
        if (strcmp(rt->type, "openai") != 0 || rt->n_api_keys == 0 || rt->priority != best)
            continue;
        if (pick < (uint64_t)rt->weight)
            return rt;
        pick -= (uint64_t)rt->weight;
    }
    return NULL;
}

static const upstream_cbs_t upstream_callbacks = {
    .on_sent = on_upstream_sent,
    .on_head = on_upstream_head,
    .writable = on_upstream_writable,
    .on_body = on_upstream_body,
    .on_done = on_upstream_done,
};

static int start_upstream(relay_t *r)
{
    size_t blen = strlen(r->route->base_url), plen = strlen(r->ep->upstream);
    r->url = malloc(blen + plen + 1);
    if (r->url == NULL)
        return -ENOMEM;
    memcpy(r->url, r->route->base_url, blen);
    memcpy(r->url + blen, r->ep->upstream, plen + 1);
    uint64_t pick = worker_rand(r->worker);
    upstream_request_t ureq = {
        .url = r->url,
        .api_key = r->route->api_keys[pick % r->route->n_api_keys],
        .stream = r->info.stream,
        .body = r->body.data,
        .body_len = r->body.len,
    };
    return upstream_start(r->worker, &ureq, &upstream_callbacks, r, &r->up);
}

static void start_relay(worker_t *w, h2o_req_t *req, const endpoint_t *ep, const char *request_id, int64_t ts_ms,
                        uint64_t start_ms)
{
    const llmrelay_config_t *cfg = w->server->cfg;
    const snapshot_key_t *key = authenticate(w, req, request_id);
    if (key == NULL) {
        log_early(w, request_id, NULL, NULL, ep, 401, ts_ms, start_ms);
        return;
    }
#define REFUSE(status, code, msg)                                                                                      \
    do {                                                                                                               \
        add_key_ratelimit_headers(w, req, key);                                                                        \
        send_error(req, request_id, status, code, msg);                                                                \
        log_early(w, request_id, key, model_found, ep, status, ts_ms, start_ms);                                  \
        return;                                                                                                        \
    } while (0)
    const snapshot_model_t *model_found = NULL;
    if (req->entity.len > cfg->max_body)
        REFUSE(413, "request_too_large", "The request body is larger than this relay accepts.");
    if (req->entity.base == NULL)
        REFUSE(400, "invalid_request", "The request needs a JSON body.");

    reqjson_info_t info;
    char err[160];
    if (reqjson_inspect(ep->kind, (const uint8_t *)req->entity.base, req->entity.len, &info, err, sizeof(err)) != 0)
        REFUSE(400, "invalid_request", err);
    const snapshot_model_t *model = snapshot_find_model(w->snapshot, info.model, strlen(info.model));
    if (model == NULL)
        REFUSE(404, "model_not_found", "The model does not exist or is not served by this relay.");
    model_found = model;
    if (!snapshot_key_allows(key, model->name))
        REFUSE(403, "model_not_allowed", "This API key may not use this model.");
    const snapshot_route_t *route = choose_route(w, model);
    if (route == NULL)
        REFUSE(503, "upstream_error", "No provider of a supported type serves this model.");

    relay_t *r = relay_alloc(w);
    if (r == NULL)
        REFUSE(503, "unavailable", "The relay is out of memory.");
    r->worker = w;
    r->req = req;
    r->conn = req->conn;
    r->http_version = req->version;
    r->snap = w->snapshot;
    snapshot_retain(r->snap);
    r->key = key;
    r->model = model;
    r->route = route;
    r->ep = ep;
    r->info = info;
    r->client_wants_usage = info.include_usage == 1;
    r->ts_ms = ts_ms;
    r->start_ms = start_ms;
    r->ttfb_ms = -1;
    r->status = 502;
    memcpy(r->request_id, request_id, strlen(request_id) + 1);
    {
        uint8_t *kept = r->body.data; /* a cached relay's (wiped) body buffer */
        size_t kept_cap = r->body.cap;
        wipe_buf_init(&r->body, (size_t)cfg->max_body * 2 + 4096);
        r->body.data = kept;
        r->body.cap = kept_cap;
    }
    wipe_buf_init(&r->pending, RELAY_PAUSE_AT + RELAY_MAX_EVENT + 64 * 1024);
    wipe_buf_init(&r->inflight, RELAY_PAUSE_AT + RELAY_MAX_EVENT + 64 * 1024);
    wipe_buf_init(&r->tail, RELAY_MAX_EVENT);
    sse_parser_init(&r->sse_parser, RELAY_MAX_EVENT);
    r->link = h2o_mem_alloc_shared(&req->pool, sizeof(relay_link_t), on_link_dispose);
    r->link->relay = r;
    w->inflight++;

    /* A key without limits needs no reservation: its usage is only counted. */
    if (!snapshot_key_metered(key)) {
        quota_decision_t free_pass;
        meter_peek(w, key, &free_pass);
        relay_admitted(r, &free_pass);
        return;
    }
    /* Admission: reserve the worst case against the key's budget and rate windows. */
    bool no_output = ep->kind == REQJSON_EMBEDDINGS;
    int64_t out_bound = no_output ? 0 : info.max_output_tokens >= 0 ? info.max_output_tokens : cfg->default_max_output_tokens;
    if (!no_output && info.max_output_tokens < 0 && snapshot_key_metered(key))
        r->force_max_output = cfg->default_max_output_tokens;
    r->worst = worst_case(w->snapshot, model, (int64_t)info.prompt_bytes, out_bound);
    /* "w<index>-" and 32 hex digits: unique per node (settles are idempotent by this id) */
    size_t qn = 0;
    r->quota_id[qn++] = 'w';
    qn += util_u64_dec((uint64_t)w->index, r->quota_id + qn);
    r->quota_id[qn++] = '-';
    util_hex64(worker_rand(w), r->quota_id + qn);
    util_hex64(worker_rand(w), r->quota_id + qn + 16);
    r->quota_id[qn + 32] = '\0';
    quota_decision_t d = meter_reserve(w, key, r->quota_id, r->worst, &r->waiter, on_quota_resolved);
    if (d.kind == QUOTA_WAIT) {
        r->waiting_quota = true;
        uv_timer_start(&r->timer, on_timer, 10000, 0);
        return;
    }
    relay_admitted(r, &d);
#undef REFUSE
}

/* Sends the 429 of a refused admission. */
static void refuse_quota(relay_t *r, const quota_decision_t *d)
{
    bool budget = d->kind == QUOTA_BUDGET_EXHAUSTED || d->reason == QUOTA_REASON_RESERVED;
    uint64_t retry_s = (d->retry_after_ms + 999) / 1000;
    if (d->reason == QUOTA_REASON_RESERVED && retry_s == 0)
        retry_s = 1;
    if (retry_s > 0 && d->kind != QUOTA_BUDGET_EXHAUSTED) {
        char v[24];
        size_t n = (size_t)snprintf(v, sizeof(v), "%llu", (unsigned long long)retry_s);
        h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                       h2o_strdup(&r->req->pool, v, n).base, n);
    }
    add_ratelimit_headers(r->req, d);
    const char *msg = d->kind == QUOTA_BUDGET_EXHAUSTED
                          ? "You exceeded your current quota: this key's budget is spent."
                      : d->reason == QUOTA_REASON_RESERVED
                          ? "This key's remaining budget is committed to requests in flight; retry shortly."
                      : d->reason == QUOTA_REASON_REQUESTS ? "Rate limit reached for requests per minute."
                      : d->reason == QUOTA_REASON_TOO_LARGE
                          ? "This request can never fit in the key's tokens-per-minute limit."
                      : d->reason == QUOTA_REASON_BUSY ? "Too many requests of this key are in flight."
                                                       : "Rate limit reached for tokens per minute.";
    relay_fail(r, 429, budget ? "insufficient_quota" : "rate_limit_exceeded", msg);
}

/* The admission's outcome: go on with the upstream request, or refuse. */
static void relay_admitted(relay_t *r, const quota_decision_t *d)
{
    h2o_req_t *req = r->req;
    r->decision = *d;
    r->has_decision = true;
    if (d->kind != QUOTA_ADMIT) {
        refuse_quota(r, d);
        return;
    }
    r->admitted = true;
    const endpoint_t *ep = r->ep;
    const reqjson_info_t *info = &r->info;
    char err[160];
    reqjson_rewrite_t rw = {
        .model = r->route->upstream_model,
        .include_usage = info->stream && (ep->kind == REQJSON_CHAT || ep->kind == REQJSON_COMPLETIONS),
        .store_false_by_default = ep->kind == REQJSON_RESPONSES,
        .default_max_output_tokens = r->force_max_output,
        .info = info,
    };
    /* With the inspection's spans, the rewrite splices its edits into a copy of the body
     * (no second parse); a body that needs none goes up as it came. */
    int ret = reqjson_rewrite(ep->kind, (const uint8_t *)req->entity.base, req->entity.len, &rw, &r->body, err,
                              sizeof(err));
    if (ret != 0) {
        relay_fail(r, ret == -EINVAL ? 400 : 503, ret == -EINVAL ? "invalid_request" : "unavailable",
                   ret == -EINVAL ? err : "The relay is out of memory.");
        return;
    }
    /* The upstream request starts once this loop iteration has read everything it polled
     * (the worker's check handle): a stream the client resets in the same packet (HTTP/2
     * Rapid Reset) is gone by then and costs the upstream nothing. */
    r->start_pending = true;
    queue_start(r);
}


static void on_quota_resolved(meter_waiter_t *waiter, const quota_decision_t *d)
{
    relay_t *r = H2O_STRUCT_FROM_MEMBER(relay_t, waiter, waiter);
    r->waiting_quota = false;
    uv_timer_stop(&r->timer);
    relay_admitted(r, d);
}

/* Starts the upstream request (from the worker's check handle, after the loop iteration's
 * I/O in which the request was admitted). */
static void begin_upstream(relay_t *r)
{
    r->start_pending = false;
    int ret = start_upstream(r);
    if (ret != 0) {
        log_warn("request %s: cannot start the upstream request: %s", r->request_id, strerror(-ret));
        relay_fail(r, 503, "unavailable", "The relay could not start the upstream request.");
        return;
    }
    r->start_ms_upstream = uv_now(&r->worker->loop);
    uv_timer_start(&r->timer, on_timer, r->worker->server->cfg->upstream_first_byte_timeout_ms, 0);
}

int relay_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    worker_t *w = worker_of(req);
    uint64_t start_ms = uv_now(&w->loop);
    int64_t ts_ms = clock_now_ms(w->server->clock);
    char request_id[65];
    request_id_for(w, req, request_id);
    h2o_iovec_t path = req->path_normalized;

    for (size_t i = 0; i < sizeof(endpoints) / sizeof(endpoints[0]); i++) {
        const endpoint_t *ep = &endpoints[i];
        if (!h2o_memis(path.base, path.len, ep->path, strlen(ep->path)))
            continue;
        if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
            add_header(req, "allow", "POST", 4);
            send_error(req, request_id, 405, "method_not_allowed", "Use POST for this endpoint.");
            return 0;
        }
        start_relay(w, req, ep, request_id, ts_ms, start_ms);
        return 0;
    }
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/models"))) {
        if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
            add_header(req, "allow", "GET", 3);
            send_error(req, request_id, 405, "method_not_allowed", "Use GET for this endpoint.");
            return 0;
        }
        const snapshot_key_t *key = authenticate(w, req, request_id);
        if (key != NULL) {
            add_key_ratelimit_headers(w, req, key);
            serve_models(w, req, key, request_id);
        }
        log_early(w, request_id, key, NULL, &models_endpoint, key != NULL ? 200 : 401, ts_ms, start_ms);
        return 0;
    }
    send_error(req, request_id, 404, "not_found", "Unknown path.");
    return 0;
}
