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

#include "node/channels.h"
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
#include "node/xlate_req.h"
#include "node/xlate_resp.h"

typedef struct endpoint {
    const char *path;     /* client path */
    const char *upstream; /* suffix appended to an OpenAI-type provider's base URL */
    const char *name;     /* endpoint name in the metadata record */
    reqjson_endpoint_t kind;
    metrics_endpoint_t metric;
    xlate_format_t fmt; /* the client's API: its auth headers, error shape, body format */
    bool chat;          /* a chat endpoint: any provider type serves it (translation) */
} endpoint_t;

static const endpoint_t endpoints[] = {
    {"/v1/chat/completions", "/chat/completions", "chat.completions", REQJSON_CHAT, METRICS_EP_CHAT_COMPLETIONS,
     XLATE_OPENAI_CHAT, true},
    {"/v1/completions", "/completions", "completions", REQJSON_COMPLETIONS, METRICS_EP_COMPLETIONS, XLATE_OPENAI_CHAT,
     false},
    {"/v1/embeddings", "/embeddings", "embeddings", REQJSON_EMBEDDINGS, METRICS_EP_EMBEDDINGS, XLATE_OPENAI_CHAT,
     false},
    {"/v1/responses", "/responses", "responses", REQJSON_RESPONSES, METRICS_EP_RESPONSES, XLATE_OPENAI_CHAT, false},
    {"/v1/messages", "/chat/completions", "messages", REQJSON_CHAT, METRICS_EP_MESSAGES, XLATE_ANTHROPIC, true},
};
static const endpoint_t gemini_endpoint = {"/v1beta/models/", "/chat/completions", "generate_content", REQJSON_CHAT,
                                           METRICS_EP_GENERATE_CONTENT, XLATE_GEMINI, true};
static const endpoint_t models_endpoint = {"/v1/models", NULL, "models", REQJSON_CHAT, METRICS_EP_MODELS,
                                           XLATE_OPENAI_CHAT, false};

/* Channels (provider, upstream key) a request may try, at most. */
#define RELAY_MAX_CHANNELS 32
/* Bytes of an upstream error answer kept to classify it and pass it on. */
#define RELAY_MAX_ERROR_BODY (64 * 1024)

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
    const snapshot_route_t *route; /* the channel of the current attempt (NULL before the first) */
    const endpoint_t *ep;
    /* Formats: the client's API, and the current attempt's provider type. translated: the
     * answer goes through xlate_resp (every case but OpenAI client to OpenAI upstream, which
     * keeps the lean pass-through path). */
    xlate_format_t cfmt, ufmt;
    bool translated, gemini_array;
    xlate_stream_t *xs;  /* a translated stream */
    wipe_buf_t whole;    /* a translated whole answer, or an error answer, gathered */
    wipe_buf_t xout;     /* what one translated event produced */
    bool err_body;       /* the attempt's answer is an error (>= 400): gathered, then judged */
    bool xlate_broken;   /* a translated stream ended with the relay's in-stream error */
    /* Channels: candidates from the model's routes, those tried, the current attempt. */
    channels_candidate_t cands[RELAY_MAX_CHANNELS];
    const snapshot_route_t *cand_routes[RELAY_MAX_CHANNELS];
    size_t n_cands, tried[RELAY_MAX_CHANNELS], n_tried;
    int cur;
    channels_ticket_t ticket;
    bool verdict_due, last_timeout, last_final, refused_field;
    unsigned attempts;
    uint64_t first_attempt_ms, first_byte_deadline_ms;
    uint64_t rng;
    char refusal[160]; /* why a translation was refused (names a field, never content) */
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

static void record_verdict(relay_t *r, channels_outcome_t o);
static bool holds_end(const relay_t *r);

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

static const char *trim_token(const char *p, size_t n, size_t *len)
{
    while (n > 0 && *p == ' ')
        p++, n--;
    while (n > 0 && p[n - 1] == ' ')
        n--;
    *len = n;
    return n > 0 ? p : NULL;
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
    return trim_token(v.base + 7, v.len - 7, len);
}

static const char *header_token(h2o_req_t *req, const char *name, size_t name_len, size_t *len)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, name, name_len, -1);
    if (i < 0)
        return NULL;
    h2o_iovec_t v = req->headers.entries[i].value;
    return trim_token(v.base, v.len, len);
}

/* The value of query parameter name (not decoded: keys and our parameters need none), or
 * NULL. */
static const char *query_param(h2o_req_t *req, const char *name, size_t *len)
{
    if (req->query_at == SIZE_MAX)
        return NULL;
    const char *q = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    size_t nlen = strlen(name);
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp != NULL ? amp : end;
        if ((size_t)(stop - q) > nlen && memcmp(q, name, nlen) == 0 && q[nlen] == '=') {
            *len = (size_t)(stop - q) - nlen - 1;
            return q + nlen + 1;
        }
        q = stop + 1;
    }
    return NULL;
}

/* The relay key as the client's API passes it: OpenAI `Authorization: Bearer`; Anthropic
 * `x-api-key` or Bearer; Gemini `x-goog-api-key`, `?key=` or Bearer. NULL when absent. */
static const char *client_token(h2o_req_t *req, xlate_format_t fmt, size_t *len)
{
    const char *t = NULL;
    if (fmt == XLATE_ANTHROPIC)
        t = header_token(req, H2O_STRLIT("x-api-key"), len);
    else if (fmt == XLATE_GEMINI) {
        t = header_token(req, H2O_STRLIT("x-goog-api-key"), len);
        if (t == NULL) {
            const char *q = query_param(req, "key", len);
            t = q != NULL && *len > 0 ? q : NULL;
        }
    }
    return t != NULL ? t : bearer_token(req, len);
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

static void send_error(h2o_req_t *req, xlate_format_t fmt, const char *request_id, int status, const char *code,
                       const char *message)
{
    errors_send(req, fmt, status, code, message, request_id);
}

/* Authenticates the request. Returns the key, or NULL after answering 401/503. */
static const snapshot_key_t *authenticate(worker_t *w, h2o_req_t *req, xlate_format_t fmt, const char *request_id)
{
    if (w->snapshot == NULL) {
        send_error(req, fmt, request_id, 503, "unavailable", "the relay has no configuration yet");
        return NULL;
    }
    size_t len = 0;
    const char *token = client_token(req, fmt, &len);
    if (token == NULL) {
        send_error(req, fmt, request_id, 401, "invalid_api_key",
                   fmt == XLATE_ANTHROPIC ? "Missing API key: pass it in the x-api-key header."
                   : fmt == XLATE_GEMINI  ? "Missing API key: pass it in the x-goog-api-key header."
                                          : "Missing API key: pass it in the Authorization header as 'Bearer <key>'.");
        return NULL;
    }
    uint8_t hash[32];
    util_sha256(token, len, hash);
    const snapshot_key_t *key = snapshot_find_key(w->snapshot, hash);
    if (key == NULL || key->revoked) {
        send_error(req, fmt, request_id, 401, "invalid_api_key", "Incorrect or revoked API key provided.");
        return NULL;
    }
    int64_t now_s = clock_now_ms(w->server->clock) / 1000;
    if (key->grace_until != 0 && key->grace_until <= now_s) {
        send_error(req, fmt, request_id, 401, "invalid_api_key",
                   "This API key was rotated and its grace period is over.");
        return NULL;
    }
    if (key->expires_at != 0 && key->expires_at <= now_s) {
        send_error(req, fmt, request_id, 401, "invalid_api_key", "This API key has expired.");
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

/* RFC 3339 UTC time of now_ms + in_ms (Anthropic's reset headers). */
static void add_reset_time_header(h2o_req_t *req, const char *name, int64_t now_ms, uint64_t in_ms)
{
    time_t t = (time_t)((now_ms + (int64_t)in_ms + 999) / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char v[32];
    size_t n = strftime(v, sizeof(v), "%Y-%m-%dT%H:%M:%SZ", &tm);
    add_header(req, name, h2o_strdup(&req->pool, v, n).base, n);
}

/* Anthropic's anthropic-ratelimit-* headers, for the limits the key has. */
static void add_anthropic_ratelimit_headers(h2o_req_t *req, const quota_decision_t *d, int64_t now_ms)
{
    if (d->limit_requests >= 0) {
        add_count_header(req, "anthropic-ratelimit-requests-limit", d->limit_requests);
        add_count_header(req, "anthropic-ratelimit-requests-remaining",
                         d->remaining_requests > 0 ? d->remaining_requests : 0);
        add_reset_time_header(req, "anthropic-ratelimit-requests-reset", now_ms, d->reset_requests_ms);
    }
    if (d->limit_tokens >= 0) {
        add_count_header(req, "anthropic-ratelimit-tokens-limit", d->limit_tokens);
        add_count_header(req, "anthropic-ratelimit-tokens-remaining", d->remaining_tokens > 0 ? d->remaining_tokens : 0);
        add_reset_time_header(req, "anthropic-ratelimit-tokens-reset", now_ms, d->reset_tokens_ms);
    }
}

static void add_ratelimit_headers_fmt(worker_t *w, h2o_req_t *req, xlate_format_t fmt, const quota_decision_t *d);

static void add_retry_after(h2o_req_t *req, uint64_t seconds)
{
    char v[24];
    size_t n = (size_t)snprintf(v, sizeof(v), "%llu", (unsigned long long)seconds);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, h2o_strdup(&req->pool, v, n).base, n);
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

/* The rate-limit headers of the client's API: OpenAI's x-ratelimit-*, Anthropic's
 * anthropic-ratelimit-*; Gemini has none. */
static void add_ratelimit_headers_fmt(worker_t *w, h2o_req_t *req, xlate_format_t fmt, const quota_decision_t *d)
{
    if (fmt == XLATE_OPENAI_CHAT)
        add_ratelimit_headers(req, d);
    else if (fmt == XLATE_ANTHROPIC)
        add_anthropic_ratelimit_headers(req, d, clock_now_ms(w->server->clock));
}

/* The headers of an answer to a known key that made no admission (errors, /v1/models). */
static void add_key_ratelimit_headers(worker_t *w, h2o_req_t *req, xlate_format_t fmt, const snapshot_key_t *key)
{
    quota_decision_t d;
    meter_peek(w, key, &d);
    add_ratelimit_headers_fmt(w, req, fmt, &d);
}

/* ---- GET /v1/models ------------------------------------------------------------------ */

/* Appends the literal lit, or the JSON string of s (quoted, escaped) when lit is NULL. */
static void models_put(char *body, size_t *n, const char *lit, const char *s)
{
    if (lit != NULL) {
        size_t l = strlen(lit);
        memcpy(body + *n, lit, l);
        *n += l;
        return;
    }
    body[(*n)++] = '"';
    for (; *s != '\0'; s++) {
        /* names are printable (admin API); quote and backslash are escaped */
        if (*s == '"' || *s == '\\')
            body[(*n)++] = '\\';
        body[(*n)++] = *s;
    }
    body[(*n)++] = '"';
}

static void serve_models(worker_t *w, h2o_req_t *req, const snapshot_key_t *key, const char *request_id)
{
    const snapshot_t *s = w->snapshot;
    /* Anthropic's shape when the request comes from an Anthropic client (its SDK always
     * sends anthropic-version). */
    bool anthropic = h2o_find_header_by_str(&req->headers, H2O_STRLIT("anthropic-version"), -1) >= 0;
    size_t cap = 256;
    for (size_t i = 0; i < s->n_models; i++)
        cap += strlen(s->models[i].name) * 6 + strlen(s->models[i].routes[0].provider) * 2 + 128;
    char *body = h2o_mem_alloc_pool(&req->pool, cap);
    size_t n = 0;
    models_put(body, &n, anthropic ? "{\"data\":[" : "{\"object\":\"list\",\"data\":[", NULL);
    const char *first_id = NULL, *last_id = NULL;
    for (size_t i = 0; i < s->n_models; i++) {
        const snapshot_model_t *m = &s->models[i];
        if (!snapshot_key_allows(key, m->name))
            continue;
        models_put(body, &n, first_id == NULL ? "{" : ",{", NULL);
        if (anthropic) {
            models_put(body, &n, "\"type\":\"model\",\"id\":", NULL);
            models_put(body, &n, NULL, m->name);
            models_put(body, &n, ",\"display_name\":", NULL);
            models_put(body, &n, NULL, m->name);
            models_put(body, &n, ",\"created_at\":\"1970-01-01T00:00:00Z\"}", NULL);
        } else {
            models_put(body, &n, "\"id\":", NULL);
            models_put(body, &n, NULL, m->name);
            models_put(body, &n, ",\"object\":\"model\",\"created\":0,\"owned_by\":", NULL);
            models_put(body, &n, NULL, m->routes[0].provider);
            models_put(body, &n, "}", NULL);
        }
        if (first_id == NULL)
            first_id = m->name;
        last_id = m->name;
    }
    if (!anthropic) {
        models_put(body, &n, "]}\n", NULL);
    } else if (first_id == NULL) {
        models_put(body, &n, "],\"has_more\":false,\"first_id\":null,\"last_id\":null}\n", NULL);
    } else {
        models_put(body, &n, "],\"has_more\":false,\"first_id\":", NULL);
        models_put(body, &n, NULL, first_id);
        models_put(body, &n, ",\"last_id\":", NULL);
        models_put(body, &n, NULL, last_id);
        models_put(body, &n, "}\n", NULL);
    }
    assert(n <= cap);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    add_header(req, "x-request-id", request_id, strlen(request_id));
    if (anthropic)
        add_header(req, "request-id", request_id, strlen(request_id));
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
    xlate_stream_free(r->xs);
    r->xs = NULL;
    wipe_buf_free(&r->whole);
    wipe_buf_free(&r->xout);
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
    wipe_buf_reset(&r->whole);
    record_verdict(r, CHANNELS_OUTCOME_CANCELLED); /* an attempt abandoned without one */

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
        .provider = r->route != NULL ? r->route->provider : "",
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
    wipe_buf_free(&r->xout);
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
    if (r->cfmt == XLATE_ANTHROPIC)
        add_header(req, "request-id", r->request_id, strlen(r->request_id));
    if (r->has_decision)
        add_ratelimit_headers_fmt(r->worker, req, r->cfmt, &r->decision);
    r->generator.proceed = on_generator_proceed;
    r->generator.stop = on_generator_stop;
    r->started = true;
    h2o_start_response(req, &r->generator);
}

static void record_channel(relay_t *r, channels_outcome_t o)
{
    const channels_candidate_t *c = &r->cands[r->cur];
    channels_record(r->worker->channels, c->provider, c->key_index, r->ticket, o, uv_now(&r->worker->loop));
}

/* The verdict of the current attempt for its channel's breaker (once per attempt). */
static void record_verdict(relay_t *r, channels_outcome_t o)
{
    if (!r->verdict_due)
        return;
    r->verdict_due = false;
    record_channel(r, o);
}

static void queue_start(relay_t *r);

/* After a failed attempt: starts the next one (true) when the policy allows, with the
 * client still there and nothing sent to it yet; the failed answer is wiped. */
static bool retry_attempt(relay_t *r, channels_outcome_t o)
{
    record_verdict(r, o);
    if (r->req == NULL || r->started)
        return false;
    const llmrelay_config_t *cfg = r->worker->server->cfg;
    channels_retry_t d = channels_should_retry(&cfg->retry_policy, o, false, r->attempts, r->first_attempt_ms,
                                               uv_now(&r->worker->loop));
    if (d != CHANNELS_RETRY || r->n_tried >= r->n_cands)
        return false;
    log_info("request %s: upstream %s failed (%s), trying another channel", r->request_id, r->route->provider,
             o == CHANNELS_OUTCOME_TIMEOUT          ? "timeout"
             : o == CHANNELS_OUTCOME_CONNECT_FAILED ? "no connection"
                                                    : "status");
    uv_timer_stop(&r->timer);
    r->got_first_byte = r->request_sent = r->sse = r->err_body = r->timed_out = false;
    r->error = 0;
    r->status = 502;
    r->ttfb_ms = -1;
    wipe_buf_reset(&r->whole);
    wipe_buf_reset(&r->body);
    sse_parser_dispose(&r->sse_parser);
    sse_parser_init(&r->sse_parser, RELAY_MAX_EVENT);
    if (r->scan != NULL)
        usage_scan_free(r->scan);
    r->scan = NULL;
    memset(&r->usage, 0, sizeof(r->usage));
    r->output_bytes = 0;
    r->events = 0;
    free(r->url);
    r->url = NULL;
    r->start_pending = true;
    queue_start(r);
    return true;
}

static void on_upstream_sent(void *data)
{
    ((relay_t *)data)->request_sent = true;
}

static void usage_from_xlate(const xlate_usage_t *x, usage_t *u)
{
    u->found = x->found;
    u->input_tokens = x->input_tokens;
    u->cached_input_tokens = x->cached_input_tokens;
    u->output_tokens = x->output_tokens;
    u->reasoning_tokens = x->reasoning_tokens;
}

static channels_format_t channels_format_of(xlate_format_t f)
{
    return f == XLATE_ANTHROPIC ? CHANNELS_FORMAT_ANTHROPIC
           : f == XLATE_GEMINI  ? CHANNELS_FORMAT_GEMINI
                                : CHANNELS_FORMAT_OPENAI;
}

static void on_upstream_head(void *data, int status, const char *content_type, size_t ct_len)
{
    relay_t *r = data;
    r->got_first_byte = true;
    r->ttfb_ms = (int64_t)(uv_now(&r->worker->loop) - r->start_ms);
    r->last_activity_ms = uv_now(&r->worker->loop);
    r->status = status;
    bool ok = status >= 200 && status < 300;
    if (!ok && (status >= 500 || status == 429)) {
        const metrics_names_t *names = r->snap->attached;
        if (names != NULL)
            metrics_record_upstream_error(r->worker->metrics,
                                          metrics_names_provider(names, r->route->provider, strlen(r->route->provider)),
                                          status == 429 ? METRICS_UPSTREAM_STATUS_429 : METRICS_UPSTREAM_STATUS_5XX);
    }
    if (status >= 400) {
        /* Gathered (bounded) and judged at its end: retried on another channel, or passed on
         * in the client's shape. */
        r->err_body = true;
        return;
    }
    record_verdict(r, CHANNELS_OUTCOME_SUCCESS);
    r->sse = ok && content_type != NULL && ct_len >= 17 && strncasecmp(content_type, "text/event-stream", 17) == 0;
    if (r->sse) {
        r->stream_counted = true;
        metrics_stream_opened(r->worker->metrics);
    }
    if (!r->translated) {
        if (ok && !r->sse)
            usage_scan_init(&r->scan);
        if (r->req != NULL)
            start_response(r, content_type, ct_len);
        return;
    }
    if (!r->sse)
        return; /* a whole answer: translated and sent at its end */
    int ret = xlate_stream_new(r->ufmt, r->cfmt, r->info.model, worker_rand(r->worker), r->ts_ms / 1000,
                               r->client_wants_usage, &r->xs);
    if (ret != 0) {
        r->xs = NULL;
        return; /* no memory: the events are dropped, usage estimated */
    }
    if (r->gemini_array)
        xlate_stream_gemini_array(r->xs);
    if (r->req != NULL) {
        if (r->gemini_array)
            start_response(r, H2O_STRLIT("application/json"));
        else
            start_response(r, H2O_STRLIT("text/event-stream"));
    }
}

/* In a cluster a metered answer's closing bytes wait with its end for the settle. */
static bool holds_end(const relay_t *r)
{
    return atomic_load(&r->worker->server->clustered) && r->admitted && snapshot_key_metered(r->key);
}

/* Passes what a translated event produced on: to the tail when it closed the answer and the
 * end is held, else to pending. */
static int put_translated(relay_t *r)
{
    int err = 0;
    if (r->req != NULL && r->xout.len > 0) {
        bool closing = r->xs != NULL && xlate_stream_ended(r->xs) && holds_end(r);
        err = wipe_buf_append(closing ? &r->tail : &r->pending, r->xout.data, r->xout.len);
    }
    wipe_buf_reset(&r->xout);
    return err;
}

static int on_sse_event(void *data, const sse_event_t *ev)
{
    relay_t *r = data;
    bool forward = true;
    if (r->translated) {
        if (!ev->has_data || ev->data_len == 0)
            return 0;
        r->output_bytes += ev->data_len;
        r->events++;
        if (r->xs == NULL)
            return 0;
        int ret = xlate_stream_event(r->xs, (const char *)ev->name, ev->name_len, ev->data, ev->data_len, &r->xout);
        if (ret == -EINVAL && !r->xlate_broken) {
            /* An upstream event the relay cannot read: the client gets its API's in-stream
             * error and the rest of the upstream stream is only read for usage. */
            r->xlate_broken = true;
            wipe_buf_reset(&r->xout);
            log_info("request %s: upstream %s sent a stream event that cannot be translated", r->request_id,
                     r->route->provider);
            ret = xlate_stream_fail(r->xs, 502, "The upstream provider sent a malformed stream event.", &r->xout);
        }
        xlate_usage_t xu;
        xlate_stream_usage(r->xs, &xu);
        if (xu.found)
            usage_from_xlate(&xu, &r->usage);
        if (ret != 0) {
            wipe_buf_reset(&r->xout);
            return ret;
        }
        return put_translated(r);
    }
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
        bool closing = ev->has_data && ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0 && holds_end(r);
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

/* Body bytes of a non-SSE answer for the client. In a cluster the body's last byte waits
 * (in tail) with its end for the settle: h2o ends a stream by itself once content-length
 * bytes went out. */
static int put_body(relay_t *r, const uint8_t *buf, size_t len)
{
    if (len == 0)
        return 0;
    if (!holds_end(r))
        return wipe_buf_append(&r->pending, buf, len);
    int err = wipe_buf_append(&r->pending, r->tail.data, r->tail.len);
    wipe_buf_reset(&r->tail);
    if (err == 0)
        err = wipe_buf_append(&r->pending, buf, len - 1);
    if (err == 0)
        err = wipe_buf_append(&r->tail, buf + len - 1, 1);
    return err;
}

/* Appends body bytes to out up to limit; false when they did not fit. */
static bool gather(wipe_buf_t *out, const uint8_t *buf, size_t len, size_t limit)
{
    if (out->len + len > limit)
        return false;
    return wipe_buf_append(out, buf, len) == 0;
}

static int on_upstream_body(void *data, const uint8_t *buf, size_t len)
{
    relay_t *r = data;
    r->last_activity_ms = uv_now(&r->worker->loop);
    r->in_upstream_cb = true;
    int err = 0;
    if (r->err_body) {
        size_t room = RELAY_MAX_ERROR_BODY - r->whole.len;
        (void)gather(&r->whole, buf, len < room ? len : room, RELAY_MAX_ERROR_BODY);
    } else if (r->sse) {
        err = sse_parser_feed(&r->sse_parser, buf, len, on_sse_event, r);
    } else if (r->translated) {
        /* A whole answer is held (bounded by --max-body) and translated at its end. */
        r->output_bytes += len;
        if (!gather(&r->whole, buf, len, (size_t)r->worker->server->cfg->max_body))
            err = -E2BIG;
    } else {
        if (r->scan != NULL)
            usage_scan_feed(r->scan, buf, len);
        r->output_bytes += len;
        if (r->req != NULL)
            err = put_body(r, buf, len);
    }
    queue_flush(r);
    r->in_upstream_cb = false;
    if (err != 0)
        return err; /* an event over RELAY_MAX_EVENT, an answer over --max-body, no memory */
    /* A client that left: once the usage is final there is nothing more to learn (OpenAI's
     * usage chunk is; Anthropic's and Gemini's counts are cumulative until the message
     * ends, which the translator tells). */
    if (r->req == NULL && r->usage.found && (!r->translated || (r->xs != NULL && xlate_stream_ended(r->xs))))
        return 1;
    return 0;
}

/* Sends a whole body the relay made (translated answer, error): head now, the body through
 * pending so that a cluster's hold of the last byte applies. */
static void send_whole(relay_t *r, const uint8_t *body, size_t len)
{
    start_response(r, H2O_STRLIT("application/json"));
    int err = put_body(r, body, len);
    if (err != 0)
        r->error = err;
}

/* The client's answer when no channel gave a usable one: an upstream's final error answer
 * (a client or quota error: not retried) in the client's shape, or after retryable failures
 * the relay's own 502 (504 when the last one was a timeout; 503 when every breaker held its
 * channel before any attempt). */
static void answer_failure(relay_t *r, int pick, uint64_t retry_after_ms)
{
    if (r->err_body && r->last_final) {
        /* an upstream error answer: its status kept, its body in the client's shape */
        wipe_buf_t out;
        wipe_buf_init(&out, RELAY_MAX_ERROR_BODY * 2 + 4096);
        if (xlate_error(r->ufmt, r->cfmt, r->status, r->whole.data, r->whole.len, &out) == 0) {
            r->final_sent = false;
            send_whole(r, out.data, out.len);
            wipe_buf_free(&out);
            return;
        }
        wipe_buf_free(&out);
    }
    r->final_sent = true;
    if (r->has_decision)
        add_ratelimit_headers_fmt(r->worker, r->req, r->cfmt, &r->decision);
    if (r->attempts == 0 && r->refused_field) {
        r->status = 400;
        send_error(r->req, r->cfmt, r->request_id, 400, "invalid_request", r->refusal);
    } else if (r->attempts == 0 && pick == -EAGAIN) {
        r->status = 503;
        add_retry_after(r->req, (retry_after_ms + 999) / 1000);
        send_error(r->req, r->cfmt, r->request_id, 503, "upstream_error",
                   "Every upstream channel of this model is failing; retry later.");
    } else if (r->attempts == 0) {
        r->status = 503;
        send_error(r->req, r->cfmt, r->request_id, 503, "upstream_error",
                   "No provider of a supported type serves this model.");
    } else {
        r->status = r->last_timeout ? 504 : 502;
        send_error(r->req, r->cfmt, r->request_id, r->status, r->last_timeout ? "upstream_timeout" : "upstream_error",
                   r->last_timeout ? "The upstream provider did not answer in time."
                                   : "The upstream provider could not be reached.");
    }
}

static void on_upstream_done(void *data, int error)
{
    relay_t *r = data;
    r->up = NULL;
    r->error = error;
    if (r->sse && (r->req != NULL || r->translated))
        sse_parser_finish(&r->sse_parser, on_sse_event, r);
    const metrics_names_t *names = r->snap->attached;
    if (error != 0 && error != -ECANCELED && names != NULL)
        metrics_record_upstream_error(r->worker->metrics,
                                      metrics_names_provider(names, r->route->provider, strlen(r->route->provider)),
                                      error == -ETIMEDOUT || r->timed_out ? METRICS_UPSTREAM_TIMEOUT
                                      : !r->got_first_byte           ? METRICS_UPSTREAM_CONNECT
                                                                     : METRICS_UPSTREAM_PROTOCOL);
    if (!r->got_first_byte && r->req != NULL) {
        /* Nothing came back: another channel, or the relay's own error. */
        bool timeout = error == -ETIMEDOUT || r->timed_out;
        log_info("request %s: upstream %s failed: %s", r->request_id, r->route->provider,
                 timeout ? "timed out" : strerror(-error));
        r->last_timeout = timeout;
        if (retry_attempt(r, timeout ? CHANNELS_OUTCOME_TIMEOUT : CHANNELS_OUTCOME_CONNECT_FAILED))
            return;
        r->error = 0;
        answer_failure(r, 0, 0);
    } else if (!r->got_first_byte) {
        record_verdict(r, CHANNELS_OUTCOME_CANCELLED);
        r->status = 499; /* the client left before the upstream answered */
    } else if (r->err_body) {
        channels_class_t cls = channels_classify(r->status, channels_format_of(r->ufmt), r->whole.data, r->whole.len);
        r->last_timeout = false;
        r->last_final = cls != CHANNELS_RETRYABLE;
        if (retry_attempt(r, channels_outcome_of_http(r->status, cls)))
            return;
        r->error = 0;
        if (r->req != NULL)
            answer_failure(r, 0, 0);
    } else {
        if (error != 0 && !(error == -ECANCELED && r->req == NULL))
            record_channel(r, CHANNELS_OUTCOME_BROKEN); /* after its SUCCESS verdict, the body broke */
        if (error == -ECANCELED && r->req == NULL && r->usage.found)
            r->error = 0; /* stopped reading on purpose once the usage was known */
        if (r->translated && r->sse && r->xs != NULL) {
            if (r->error == 0 || r->req != NULL) {
                int ret = r->error == 0 ? xlate_stream_finish(r->xs, &r->xout)
                                        : xlate_stream_fail(r->xs, 502, "The upstream stream broke off.", &r->xout);
                if (ret == -EPIPE || r->error != 0)
                    r->xlate_broken = true;
                if (put_translated(r) != 0)
                    r->error = -ENOMEM;
            }
            if (r->xlate_broken && r->req != NULL)
                r->error = 0; /* the client's API has said so in the stream; end it cleanly */
        } else if (r->translated && !r->sse && r->req != NULL) {
            /* A whole answer, translated now. */
            xlate_usage_t xu;
            char err[160];
            wipe_buf_t out;
            wipe_buf_init(&out, (size_t)r->worker->server->cfg->max_body * 2 + 4096);
            int ret = r->error == 0 ? xlate_response(r->ufmt, r->cfmt, r->whole.data, r->whole.len, r->info.model,
                                                     worker_rand(r->worker), r->ts_ms / 1000, &out, &xu, err,
                                                     sizeof(err))
                                    : -EIO;
            if (ret == 0) {
                usage_from_xlate(&xu, &r->usage);
                send_whole(r, out.data, out.len);
            } else {
                if (r->error == 0 && xlate_usage_of(r->ufmt, r->whole.data, r->whole.len, &xu) == 0 && xu.found)
                    usage_from_xlate(&xu, &r->usage);
                log_info("request %s: the answer of upstream %s could not be translated (%s)", r->request_id,
                         r->route->provider, ret == -EIO ? "incomplete" : ret == -E2BIG ? "too large" : "malformed");
                r->final_sent = true;
                r->status = 502;
                send_error(r->req, r->cfmt, r->request_id, 502, "upstream_error",
                           "The upstream provider's answer could not be read.");
            }
            r->error = 0;
            wipe_buf_free(&out);
        } else if (r->translated && !r->sse) {
            xlate_usage_t xu;
            if (xlate_usage_of(r->ufmt, r->whole.data, r->whole.len, &xu) == 0 && xu.found)
                usage_from_xlate(&xu, &r->usage);
        }
    }
    wipe_buf_reset(&r->whole);
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
    send_error(r->req, r->cfmt, r->request_id, status, code, message);
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
    if (r->start_pending)
        return; /* between attempts: the next one starts its own timer */
    if (!r->got_first_byte) {
        uint64_t deadline = r->first_byte_deadline_ms;
        if (now >= deadline) {
            log_info("request %s: no first byte from %s within %llu ms", r->request_id, r->route->provider,
                     (unsigned long long)(deadline - r->start_ms_upstream));
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
    if (r->sse && r->got_first_byte && holds_end(r)) {
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

static xlate_format_t format_of_type(const char *type)
{
    return strcmp(type, "anthropic") == 0 ? XLATE_ANTHROPIC
           : strcmp(type, "gemini") == 0  ? XLATE_GEMINI
                                          : XLATE_OPENAI_CHAT;
}

static bool type_known(const char *type)
{
    return strcmp(type, "openai") == 0 || strcmp(type, "anthropic") == 0 || strcmp(type, "gemini") == 0;
}

/* The channels that may serve a request of endpoint ep for model m: every upstream key of
 * every route whose provider type can serve it (any type for a chat endpoint, through
 * translation; OpenAI only for completions, embeddings and responses). */
static size_t build_candidates(relay_t *r, const snapshot_model_t *m, const endpoint_t *ep)
{
    /* r NULL: count only */
    size_t n = 0;
    for (size_t i = 0; i < m->n_routes; i++) {
        const snapshot_route_t *rt = &m->routes[i];
        if (!type_known(rt->type) || (!ep->chat && strcmp(rt->type, "openai") != 0))
            continue;
        for (size_t k = 0; k < rt->n_api_keys && n < RELAY_MAX_CHANNELS; k++) {
            if (r == NULL) {
                n++;
                continue;
            }
            r->cands[n] = (channels_candidate_t){
                .provider = rt->provider,
                .key_index = (uint32_t)k,
                .route = (uint32_t)i,
                .priority = rt->priority,
                .weight = rt->weight > 0 ? (uint32_t)rt->weight : 1,
            };
            r->cand_routes[n] = rt;
            n++;
        }
    }
    return n;
}

static const upstream_cbs_t upstream_callbacks = {
    .on_sent = on_upstream_sent,
    .on_head = on_upstream_head,
    .writable = on_upstream_writable,
    .on_body = on_upstream_body,
    .on_done = on_upstream_done,
};

/* The current channel's URL: OpenAI <base><endpoint suffix>, Anthropic <base>/v1/messages,
 * Gemini <base>/v1beta/models/<model>:generateContent or :streamGenerateContent?alt=sse
 * (the model percent-encoded but for RFC 3986's unreserved characters). */
static int build_url(relay_t *r)
{
    const snapshot_route_t *rt = r->route;
    const char *a = rt->base_url, *b = "", *c = "";
    if (r->ufmt == XLATE_OPENAI_CHAT) {
        b = r->ep->upstream;
    } else if (r->ufmt == XLATE_ANTHROPIC) {
        b = "/v1/messages";
    } else {
        b = "/v1beta/models/";
        c = r->info.stream ? ":streamGenerateContent?alt=sse" : ":generateContent";
    }
    const char *model = r->ufmt == XLATE_GEMINI ? rt->upstream_model : "";
    size_t la = strlen(a), lb = strlen(b), lm = strlen(model), lc = strlen(c);
    r->url = malloc(la + lb + 3 * lm + lc + 1);
    if (r->url == NULL)
        return -ENOMEM;
    char *p = r->url;
    memcpy(p, a, la);
    p += la;
    memcpy(p, b, lb);
    p += lb;
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < lm; i++) {
        unsigned char ch = (unsigned char)model[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
            ch == '.' || ch == '_' || ch == '~') {
            *p++ = (char)ch;
        } else {
            *p++ = '%';
            *p++ = hex[ch >> 4];
            *p++ = hex[ch & 15];
        }
    }
    memcpy(p, c, lc + 1);
    return 0;
}

/* The current channel's request body, from the client's: OpenAI to OpenAI is rewritten in
 * place (model alias, stream usage, store, max tokens); every other pair is translated.
 * -EINVAL: this channel's format cannot express the request (r->refusal says which field). */
static int build_body(relay_t *r)
{
    h2o_req_t *req = r->req;
    const endpoint_t *ep = r->ep;
    const reqjson_info_t *info = &r->info;
    r->refusal[0] = '\0';
    wipe_buf_reset(&r->body);
    r->translated = !(r->cfmt == XLATE_OPENAI_CHAT && r->ufmt == XLATE_OPENAI_CHAT);
    if (!r->translated) {
        reqjson_rewrite_t rw = {
            .model = r->route->upstream_model,
            .include_usage = info->stream && (ep->kind == REQJSON_CHAT || ep->kind == REQJSON_COMPLETIONS),
            .store_false_by_default = ep->kind == REQJSON_RESPONSES,
            .default_max_output_tokens = r->force_max_output,
            .info = info,
        };
        /* With the inspection's spans, the rewrite splices its edits into a copy of the body
         * (no second parse); a body that needs none goes up as it came. */
        return reqjson_rewrite(ep->kind, (const uint8_t *)req->entity.base, req->entity.len, &rw, &r->body,
                               r->refusal, sizeof(r->refusal));
    }
    return xlate_request(r->cfmt, r->ufmt, (const uint8_t *)req->entity.base, req->entity.len,
                         r->route->upstream_model, r->force_max_output,
                         (int64_t)r->worker->server->cfg->default_max_output_tokens, info->stream, &r->body, NULL,
                         r->refusal, sizeof(r->refusal));
}

static int start_upstream(relay_t *r)
{
    int ret = build_url(r);
    if (ret != 0)
        return ret;
    const snapshot_route_t *rt = r->route;
    upstream_request_t ureq = {
        .url = r->url,
        .api_key = rt->api_keys[r->cands[r->cur].key_index],
        .auth = r->ufmt == XLATE_ANTHROPIC ? UPSTREAM_AUTH_ANTHROPIC
                : r->ufmt == XLATE_GEMINI  ? UPSTREAM_AUTH_GEMINI
                                           : UPSTREAM_AUTH_BEARER,
        .stream = r->info.stream,
        .body = r->body.data,
        .body_len = r->body.len,
    };
    return upstream_start(r->worker, &ureq, &upstream_callbacks, r, &r->up);
}

/* The client's body, inspected: model, stream, max output, prompt bytes. OpenAI bodies by
 * reqjson (whose spans the rewrite reuses); Anthropic and Gemini bodies by the translator's
 * parser (a normalising copy into a scratch buffer, then wiped), Gemini's model and stream
 * coming from the URL. 0 or -EINVAL (err says why) or -ENOMEM. */
static int inspect_body(worker_t *w, h2o_req_t *req, const endpoint_t *ep, const char *gemini_model,
                        size_t gemini_model_len, bool gemini_stream, reqjson_info_t *info, char *err, size_t errlen)
{
    if (ep->fmt == XLATE_OPENAI_CHAT)
        return reqjson_inspect(ep->kind, (const uint8_t *)req->entity.base, req->entity.len, info, err, errlen);
    memset(info, 0, sizeof(*info));
    xlate_req_info_t xi;
    wipe_buf_t scratch;
    wipe_buf_init(&scratch, (size_t)w->server->cfg->max_body * 2 + 4096);
    int ret = xlate_request(ep->fmt, ep->fmt, (const uint8_t *)req->entity.base, req->entity.len, "", 0,
                            (int64_t)w->server->cfg->default_max_output_tokens, gemini_stream, &scratch, &xi, err,
                            errlen);
    wipe_buf_free(&scratch);
    if (ret == -E2BIG) {
        snprintf(err, errlen, "The request body is too large.");
        return -EINVAL;
    }
    if (ret != 0)
        return ret;
    if (ep->fmt == XLATE_GEMINI) {
        memcpy(info->model, gemini_model, gemini_model_len);
        info->model[gemini_model_len] = '\0';
        info->stream = gemini_stream;
    } else {
        snprintf(info->model, sizeof(info->model), "%s", xi.model);
        info->stream = xi.stream;
    }
    info->has_model = true;
    info->include_usage = -1;
    info->store = -1;
    info->max_output_tokens = xi.max_output_tokens;
    info->prompt_bytes = xi.prompt_bytes;
    return 0;
}

/* What the URL of a Gemini request says: /v1beta/models/{model}:generateContent or
 * :streamGenerateContent (?alt=sse for SSE, else the JSON-array stream). */
typedef struct gemini_call {
    const char *model;
    size_t model_len;
    bool stream, sse;
} gemini_call_t;

static bool parse_gemini_path(h2o_req_t *req, gemini_call_t *g)
{
    h2o_iovec_t path = req->path_normalized;
    size_t plen = strlen(gemini_endpoint.path);
    if (path.len <= plen || memcmp(path.base, gemini_endpoint.path, plen) != 0)
        return false;
    const char *m = path.base + plen, *end = path.base + path.len;
    const char *colon = memchr(m, ':', (size_t)(end - m));
    if (colon == NULL || colon == m || (size_t)(colon - m) > REQJSON_MODEL_MAX)
        return false;
    for (const char *p = m; p < colon; p++)
        if ((unsigned char)*p <= 0x20 || *p == '/' || *p == '"' || *p == '\\' || (unsigned char)*p >= 0x7f)
            return false;
    h2o_iovec_t method = h2o_iovec_init(colon + 1, (size_t)(end - colon - 1));
    if (h2o_memis(method.base, method.len, H2O_STRLIT("generateContent")))
        g->stream = false;
    else if (h2o_memis(method.base, method.len, H2O_STRLIT("streamGenerateContent")))
        g->stream = true;
    else
        return false;
    g->model = m;
    g->model_len = (size_t)(colon - m);
    size_t alen = 0;
    const char *alt = query_param(req, "alt", &alen);
    g->sse = alt != NULL && alen == 3 && memcmp(alt, "sse", 3) == 0;
    return true;
}

static void start_relay(worker_t *w, h2o_req_t *req, const endpoint_t *ep, const gemini_call_t *gc,
                        const char *request_id, int64_t ts_ms, uint64_t start_ms)
{
    const llmrelay_config_t *cfg = w->server->cfg;
    const xlate_format_t fmt = ep->fmt;
    const snapshot_key_t *key = authenticate(w, req, fmt, request_id);
    if (key == NULL) {
        log_early(w, request_id, NULL, NULL, ep, 401, ts_ms, start_ms);
        return;
    }
#define REFUSE(status, code, msg)                                                                                      \
    do {                                                                                                               \
        add_key_ratelimit_headers(w, req, fmt, key);                                                                   \
        send_error(req, fmt, request_id, status, code, msg);                                                           \
        log_early(w, request_id, key, model_found, ep, status, ts_ms, start_ms);                                       \
        return;                                                                                                        \
    } while (0)
    const snapshot_model_t *model_found = NULL;
    if (req->entity.len > cfg->max_body)
        REFUSE(413, "request_too_large", "The request body is larger than this relay accepts.");
    if (req->entity.base == NULL)
        REFUSE(400, "invalid_request", "The request needs a JSON body.");

    reqjson_info_t info;
    char err[160];
    int ret = inspect_body(w, req, ep, gc != NULL ? gc->model : NULL, gc != NULL ? gc->model_len : 0,
                           gc != NULL && gc->stream, &info, err, sizeof(err));
    if (ret == -ENOMEM)
        REFUSE(503, "unavailable", "The relay is out of memory.");
    if (ret != 0)
        REFUSE(400, "invalid_request", err);
    const snapshot_model_t *model = snapshot_find_model(w->snapshot, info.model, strlen(info.model));
    if (model == NULL)
        REFUSE(404, "model_not_found", "The model does not exist or is not served by this relay.");
    model_found = model;
    if (!snapshot_key_allows(key, model->name))
        REFUSE(403, "model_not_allowed", "This API key may not use this model.");

    if (build_candidates(NULL, model, ep) == 0) {
        if (!ep->chat)
            REFUSE(400, "invalid_request",
                   "This endpoint is not available for this model: none of its providers serves it natively.");
        REFUSE(503, "upstream_error", "No provider of a supported type serves this model.");
    }
    relay_t *r = relay_alloc(w);
    if (r == NULL)
        REFUSE(503, "unavailable", "The relay is out of memory.");
    r->n_cands = build_candidates(r, model, ep);
    r->worker = w;
    r->req = req;
    r->conn = req->conn;
    r->http_version = req->version;
    r->snap = w->snapshot;
    snapshot_retain(r->snap);
    r->key = key;
    r->model = model;
    r->ep = ep;
    r->cfmt = fmt;
    r->gemini_array = gc != NULL && gc->stream && !gc->sse;
    r->info = info;
    r->client_wants_usage = info.include_usage == 1;
    r->ts_ms = ts_ms;
    r->start_ms = start_ms;
    r->ttfb_ms = -1;
    r->status = 502;
    r->rng = worker_rand(w);
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
    wipe_buf_init(&r->whole, (size_t)cfg->max_body + RELAY_MAX_ERROR_BODY);
    wipe_buf_init(&r->xout, 2 * RELAY_MAX_EVENT + XLATE_RESP_MAX_TOOL_ARGS + 64 * 1024);
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
    if (retry_s > 0 && d->kind != QUOTA_BUDGET_EXHAUSTED)
        add_retry_after(r->req, retry_s);
    add_ratelimit_headers_fmt(r->worker, r->req, r->cfmt, d);
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
    r->decision = *d;
    r->has_decision = true;
    if (d->kind != QUOTA_ADMIT) {
        refuse_quota(r, d);
        return;
    }
    r->admitted = true;
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

/* Starts the next attempt (from the worker's check handle, after the loop iteration's
 * I/O in which the request was admitted or the previous attempt failed): the breakers
 * pick a channel among those not tried yet, its body is made in its provider's format,
 * and the request leaves with a first-byte timeout capped by the retry budget. */
static void begin_upstream(relay_t *r)
{
    r->start_pending = false;
    worker_t *w = r->worker;
    const llmrelay_config_t *cfg = w->server->cfg;
    for (;;) {
        uint64_t now = uv_now(&w->loop), retry_after = 0;
        int c = channels_pick(w->channels, r->cands, r->n_cands, r->tried, r->n_tried, now, &r->rng, &r->ticket,
                              &retry_after);
        if (c < 0) {
            answer_failure(r, c, retry_after);
            relay_upstream_over(r);
            flush(r);
            return;
        }
        r->tried[r->n_tried++] = (size_t)c;
        r->cur = c;
        r->route = r->cand_routes[c];
        r->ufmt = format_of_type(r->route->type);
        r->verdict_due = true;
        int ret = build_body(r);
        if (ret == -EINVAL) {
            /* this channel's format cannot carry the request faithfully: another may */
            record_verdict(r, CHANNELS_OUTCOME_CANCELLED);
            r->refused_field = true;
            if (r->attempts == 0)
                continue;
            answer_failure(r, -ENOENT, 0);
            relay_upstream_over(r);
            flush(r);
            return;
        }
        if (ret == 0) {
            if (r->attempts == 0)
                r->first_attempt_ms = now;
            r->attempts++;
            ret = start_upstream(r);
        }
        if (ret != 0) {
            record_verdict(r, CHANNELS_OUTCOME_CANCELLED);
            log_warn("request %s: cannot start the upstream request: %s", r->request_id, strerror(-ret));
            relay_fail(r, 503, "unavailable", "The relay could not start the upstream request.");
            return;
        }
        r->start_ms_upstream = now;
        uint64_t timeout = cfg->upstream_first_byte_timeout_ms;
        uint64_t left = channels_budget_left_ms(&cfg->retry_policy, r->first_attempt_ms, now);
        if (r->attempts > 1 && left < timeout)
            timeout = left > 0 ? left : 1;
        r->first_byte_deadline_ms = now + timeout;
        uv_timer_start(&r->timer, on_timer, timeout, 0);
        return;
    }
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
            send_error(req, ep->fmt, request_id, 405, "method_not_allowed", "Use POST for this endpoint.");
            return 0;
        }
        start_relay(w, req, ep, NULL, request_id, ts_ms, start_ms);
        return 0;
    }
    size_t gplen = strlen(gemini_endpoint.path);
    if (path.len >= gplen && memcmp(path.base, gemini_endpoint.path, gplen) == 0) {
        gemini_call_t gc;
        if (!parse_gemini_path(req, &gc)) {
            send_error(req, XLATE_GEMINI, request_id, 404, "not_found",
                       "Unknown method: use models/{model}:generateContent or :streamGenerateContent.");
            return 0;
        }
        if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
            add_header(req, "allow", "POST", 4);
            send_error(req, XLATE_GEMINI, request_id, 405, "method_not_allowed", "Use POST for this method.");
            return 0;
        }
        start_relay(w, req, &gemini_endpoint, &gc, request_id, ts_ms, start_ms);
        return 0;
    }
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/models"))) {
        if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
            add_header(req, "allow", "GET", 3);
            send_error(req, XLATE_OPENAI_CHAT, request_id, 405, "method_not_allowed", "Use GET for this endpoint.");
            return 0;
        }
        xlate_format_t mfmt = h2o_find_header_by_str(&req->headers, H2O_STRLIT("anthropic-version"), -1) >= 0
                                  ? XLATE_ANTHROPIC
                                  : XLATE_OPENAI_CHAT;
        const snapshot_key_t *key = authenticate(w, req, mfmt, request_id);
        if (key != NULL) {
            add_key_ratelimit_headers(w, req, mfmt, key);
            serve_models(w, req, key, request_id);
        }
        log_early(w, request_id, key, NULL, &models_endpoint, key != NULL ? 200 : 401, ts_ms, start_ms);
        return 0;
    }
    send_error(req, XLATE_OPENAI_CHAT, request_id, 404, "not_found", "Unknown path.");
    return 0;
}
