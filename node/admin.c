/* admin.c — the admin API listener (see admin.h and docs/admin-api.md).
 *
 * How it works: one h2o context on the node's main uv loop, one catch-all handler that
 * routes by path. Reads are answered at once from config_store_current(). Writes build a
 * record, hand it to the config store and answer from the store's completion callback:
 * the in-flight write (admin_write_t, on the heap) and the request point at each other
 * through a slot in the request pool whose dispose callback cuts the link, so a client that
 * leaves, or admin_stop, makes the later callback a no-op that just frees the write.
 *
 * Secrets: presented tokens are only hashed (SHA-256) and compared in constant time; a new
 * key's secret exists in the write context and in the response buffer, both wiped; request
 * bodies (which may hold upstream API keys) are wiped in place once parsed, as are the
 * strings of the parse tree and every buffer yajl_gen used. Upstream API keys are answered
 * masked, never in full. Log lines name the method, a sanitised path, the status and the
 * token's name: never a token, a secret or a body.
 *
 * Shutdown: admin_stop closes the listener, answers pending writes with 503 and shuts the
 * connections' sockets down so h2o closes them. When the last close callback has run, the
 * h2o context is disposed; its timers close asynchronously, so the admin_t is freed from a
 * close callback two closing phases later. */
#include "node/admin.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <h2o.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "config.pb-c.h"
#include "node/log.h"
#include "node/util.h"

#define ADMIN_MAX_CONNS 64
#define ADMIN_MAX_JSON_DEPTH 8
#define ADMIN_MAX_TOKEN_FILE 4096
/* Field bounds: docs/admin-api.md. */
#define ADMIN_MAX_NAME 64      /* provider names, regions */
#define ADMIN_MAX_KEY_NAME 128 /* relay key names */
#define ADMIN_MAX_MODEL 256    /* model names and aliases */
#define ADMIN_MAX_URL 1024
#define ADMIN_MAX_UPSTREAM_KEY 512
#define ADMIN_MAX_LIST 1024 /* models, map entries */
#define ADMIN_MAX_UPSTREAM_KEYS 64
#define ADMIN_MAX_PRIORITY 1000000
#define ADMIN_MAX_WEIGHT 1000000
#define ADMIN_KEY_SECRET_BYTES 32
#define ADMIN_KEY_PREFIX "sk-lr-"
#define ADMIN_KEY_PREFIX_SHOWN 10 /* "sk-lr-" + 4 characters */

struct admin {
    uv_loop_t *loop;
    config_store_t *store;
    admin_status_cb status_cb;
    void *status_data;
    h2o_globalconf_t globalconf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    uv_tcp_t listener;
    uv_idle_t reaper[2]; /* closed in turn after h2o_context_dispose; the second frees us */
    int port;
    bool stopping;
    bool listener_closed;
    bool finishing;
    size_t num_conns;
    h2o_linklist_t conns;   /* admin_conn_t.link */
    h2o_linklist_t pending; /* admin_write_t.link: writes waiting for the store */
    bool has_bootstrap;
    char bootstrap_hash[65];
};

typedef struct admin_conn {
    uv_tcp_t tcp; /* first: h2o hands this handle back to on_conn_close */
    h2o_linklist_t link;
    admin_t *admin;
} admin_conn_t;

typedef struct admin_handler {
    h2o_handler_t super;
    admin_t *admin;
} admin_handler_t;

/* Per request, in the request pool. */
typedef struct admin_req {
    admin_t *admin;
    h2o_req_t *req;
    const char *token_name; /* for the log line: "-" before auth */
    char request_id[65];
} admin_req_t;

typedef enum { WRITE_PROVIDER_PUT, WRITE_PROVIDER_DELETE, WRITE_KEY_CREATE, WRITE_KEY_REVOKE } write_kind_t;

typedef struct admin_write {
    h2o_linklist_t link;       /* in admin->pending while a request waits for it */
    admin_req_t *areq;         /* NULL once the request is gone or answered */
    struct admin_write **slot; /* in the request pool; NULL once detached */
    write_kind_t kind;
    Llmrelay__Provider *provider; /* owned (protobuf-c unpacked) */
    Llmrelay__ApiKey *key;        /* owned (protobuf-c unpacked) */
    char name[ADMIN_MAX_NAME + 1];
    char secret[96]; /* key create only; wiped */
} admin_write_t;

/* ---- pure helpers ---- */

int admin_mask_secret(const char *secret, char *out, size_t outcap)
{
    static const char ellipsis[] = "\xe2\x80\xa6"; /* U+2026 */
    size_t len = strlen(secret);
    size_t shown = len >= 12 ? 4 : 0;
    if (outcap < sizeof(ellipsis) + shown)
        return -ENOBUFS;
    memcpy(out, ellipsis, sizeof(ellipsis) - 1);
    memcpy(out + sizeof(ellipsis) - 1, secret + len - shown, shown);
    out[sizeof(ellipsis) - 1 + shown] = '\0';
    return 0;
}

bool admin_name_valid(const char *s, size_t len)
{
    if (len == 0 || len > ADMIN_MAX_NAME)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return false;
    }
    return true;
}

/* Printable text of at most max bytes, no control characters (key names, models, region). */
static bool label_valid(const char *s, size_t max)
{
    size_t len = strlen(s);
    if (len == 0 || len > max)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

static int64_t now_unix(void)
{
    return (int64_t)time(NULL);
}

/* Deepest nesting of [ and { outside strings; bounds the recursion of tree walks. */
static size_t json_depth(const char *s, size_t len)
{
    size_t depth = 0, max = 0;
    bool in_string = false, escaped = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
            continue;
        }
        if (c == '"')
            in_string = true;
        else if (c == '[' || c == '{') {
            if (++depth > max)
                max = depth;
        } else if ((c == ']' || c == '}') && depth > 0)
            depth--;
    }
    return max;
}

/* Wipes every string of a parse tree (values, keys, raw numbers) before it is freed. */
static void tree_wipe(yajl_val v)
{
    if (v == NULL)
        return;
    switch (v->type) {
    case yajl_t_string:
        if (v->u.string != NULL)
            explicit_bzero(v->u.string, strlen(v->u.string));
        break;
    case yajl_t_number:
        if (v->u.number.r != NULL)
            explicit_bzero(v->u.number.r, strlen(v->u.number.r));
        break;
    case yajl_t_object:
        for (size_t i = 0; i < v->u.object.len; i++) {
            if (v->u.object.keys[i] != NULL)
                explicit_bzero((char *)v->u.object.keys[i], strlen(v->u.object.keys[i]));
            tree_wipe(v->u.object.values[i]);
        }
        break;
    case yajl_t_array:
        for (size_t i = 0; i < v->u.array.len; i++)
            tree_wipe(v->u.array.values[i]);
        break;
    default:
        break;
    }
}

static void tree_free(yajl_val v)
{
    tree_wipe(v);
    yajl_tree_free(v);
}

/* ---- JSON writing: yajl_gen over an allocator that wipes what it frees ---- */

typedef struct wipe_hdr {
    size_t size;
    max_align_t align;
} wipe_hdr_t;

static void *wipe_malloc(void *ctx, size_t sz)
{
    (void)ctx;
    wipe_hdr_t *h = malloc(offsetof(wipe_hdr_t, align) + sz);
    if (h == NULL)
        return NULL;
    h->size = sz;
    return (char *)h + offsetof(wipe_hdr_t, align);
}

static void wipe_free(void *ctx, void *p)
{
    (void)ctx;
    if (p == NULL)
        return;
    wipe_hdr_t *h = (wipe_hdr_t *)((char *)p - offsetof(wipe_hdr_t, align));
    explicit_bzero(p, h->size);
    free(h);
}

static void *wipe_realloc(void *ctx, void *p, size_t sz)
{
    if (p == NULL)
        return wipe_malloc(ctx, sz);
    wipe_hdr_t *h = (wipe_hdr_t *)((char *)p - offsetof(wipe_hdr_t, align));
    void *n = wipe_malloc(ctx, sz);
    if (n == NULL)
        return NULL;
    memcpy(n, p, h->size < sz ? h->size : sz);
    wipe_free(ctx, p);
    return n;
}

static yajl_alloc_funcs wipe_alloc_funcs = {wipe_malloc, wipe_realloc, wipe_free, NULL};

typedef struct jw {
    yajl_gen g;
    bool failed;
} jw_t;

static int jw_init(jw_t *w)
{
    w->failed = false;
    w->g = yajl_gen_alloc(&wipe_alloc_funcs);
    if (w->g == NULL)
        return -ENOMEM;
    yajl_gen_config(w->g, yajl_gen_validate_utf8, 1);
    return 0;
}

static void jw_check(jw_t *w, yajl_gen_status st)
{
    if (st != yajl_gen_status_ok)
        w->failed = true;
}

static void jw_str(jw_t *w, const char *s)
{
    jw_check(w, yajl_gen_string(w->g, (const unsigned char *)s, strlen(s)));
}

static void jw_key(jw_t *w, const char *k)
{
    jw_str(w, k);
}

static void jw_int(jw_t *w, int64_t v)
{
    jw_check(w, yajl_gen_integer(w->g, (long long)v));
}

static void jw_null(jw_t *w)
{
    jw_check(w, yajl_gen_null(w->g));
}

static void jw_bool(jw_t *w, bool v)
{
    jw_check(w, yajl_gen_bool(w->g, v));
}

static void jw_double(jw_t *w, double v)
{
    if (!isfinite(v)) {
        jw_null(w);
        return;
    }
    char buf[64];
    int n = snprintf(buf, sizeof(buf), "%.15g", v);
    jw_check(w, yajl_gen_number(w->g, buf, (size_t)n));
}

static void jw_time(jw_t *w, int64_t unix_s)
{
    char buf[32];
    if (unix_s == 0 || util_format_rfc3339(unix_s, buf) != 0)
        jw_null(w);
    else
        jw_str(w, buf);
}

static void jw_map_open(jw_t *w)
{
    jw_check(w, yajl_gen_map_open(w->g));
}

static void jw_map_close(jw_t *w)
{
    jw_check(w, yajl_gen_map_close(w->g));
}

static void jw_array_open(jw_t *w)
{
    jw_check(w, yajl_gen_array_open(w->g));
}

static void jw_array_close(jw_t *w)
{
    jw_check(w, yajl_gen_array_close(w->g));
}

static void jw_free(jw_t *w)
{
    if (w->g != NULL)
        yajl_gen_free(w->g); /* its buffer goes through wipe_free */
    w->g = NULL;
}

/* ---- responses ---- */

typedef struct wiped_buf {
    size_t len;
    char bytes[];
} wiped_buf_t;

static void wiped_buf_dispose(void *p)
{
    wiped_buf_t *b = p;
    explicit_bzero(b->bytes, b->len);
}

static const char *reason_of(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 503:
        return "Service Unavailable";
    default:
        return "Internal Server Error";
    }
}

/* Copies s into out, keeping [A-Za-z0-9/._~-] and replacing anything else by '?'; a path
 * segment that looks like a relay key secret is shown as "sk-…" only. */
static void sanitize_for_log(const char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < cap; i++) {
        bool seg_start = i == 0 || s[i - 1] == '/';
        if (seg_start && len - i >= 3 && memcmp(s + i, "sk-", 3) == 0) {
            const char *redacted = "sk-(redacted)";
            for (size_t k = 0; redacted[k] != '\0' && o + 1 < cap; k++)
                out[o++] = redacted[k];
            while (i + 1 < len && s[i + 1] != '/')
                i++;
            continue;
        }
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '/' || c == '.' ||
                  c == '_' || c == '~' || c == '-';
        out[o++] = ok ? c : '?';
    }
    out[o] = '\0';
}

static void log_call(admin_req_t *r, int status)
{
    char method[17], path[161];
    sanitize_for_log(r->req->method.base, r->req->method.len, method, sizeof(method));
    sanitize_for_log(r->req->path_normalized.base, r->req->path_normalized.len, path, sizeof(path));
    log_info("admin method=%s path=%s status=%d token=%s request_id=%s", method, path, status, r->token_name,
             r->request_id);
}

/* Sends body (copied into a pool buffer that is wiped when the request ends) as the
 * complete JSON response. */
static void send_body(admin_req_t *r, int status, const char *body, size_t len, const char *allow)
{
    h2o_req_t *req = r->req;
    wiped_buf_t *b = h2o_mem_alloc_shared(&req->pool, sizeof(*b) + len + 1, wiped_buf_dispose);
    b->len = len;
    memcpy(b->bytes, body, len);
    b->bytes[len] = '\0';

    req->res.status = status;
    req->res.reason = reason_of(status);
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, r->request_id,
                          strlen(r->request_id));
    if (allow != NULL)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, allow, strlen(allow));
    log_call(r, status);

    static h2o_generator_t generator = {NULL, NULL};
    h2o_start_response(req, &generator);
    h2o_iovec_t buf = h2o_iovec_init(b->bytes, len);
    h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}

static void send_error_allow(admin_req_t *r, int status, const char *code, const char *message, const char *allow)
{
    const char *type;
    switch (status) {
    case 400:
    case 413:
        type = "invalid_request_error";
        break;
    case 401:
        type = "authentication_error";
        break;
    case 403:
        type = "permission_error";
        break;
    case 404:
        type = "not_found_error";
        break;
    case 405:
        type = "invalid_request_error";
        break;
    default:
        type = "api_error";
        break;
    }
    jw_t w;
    if (jw_init(&w) == 0) {
        jw_map_open(&w);
        jw_key(&w, "error");
        jw_map_open(&w);
        jw_key(&w, "message");
        jw_str(&w, message);
        jw_key(&w, "type");
        jw_str(&w, type);
        jw_key(&w, "code");
        jw_str(&w, code);
        jw_map_close(&w);
        jw_map_close(&w);
        const unsigned char *out;
        size_t len;
        if (!w.failed && yajl_gen_get_buf(w.g, &out, &len) == yajl_gen_status_ok) {
            send_body(r, status, (const char *)out, len, allow);
            jw_free(&w);
            return;
        }
        jw_free(&w);
    }
    static const char fallback[] = "{\"error\":{\"message\":\"internal error\",\"type\":\"api_error\","
                                   "\"code\":\"internal_error\"}}";
    send_body(r, 500, fallback, sizeof(fallback) - 1, NULL);
}

static void send_error(admin_req_t *r, int status, const char *code, const char *message)
{
    send_error_allow(r, status, code, message, NULL);
}

static void send_bad_request(admin_req_t *r, const char *message)
{
    send_error(r, 400, "invalid_request", message);
}

/* Sends what w holds and frees it. */
static void send_jw(admin_req_t *r, int status, jw_t *w)
{
    const unsigned char *out;
    size_t len;
    if (w->failed || yajl_gen_get_buf(w->g, &out, &len) != yajl_gen_status_ok) {
        jw_free(w);
        send_error(r, 500, "internal_error", "could not encode the answer (a stored record is not valid UTF-8)");
        return;
    }
    send_body(r, status, (const char *)out, len, NULL);
    jw_free(w);
}

/* ---- records → JSON ---- */

static void gen_provider(jw_t *w, const Llmrelay__Provider *p)
{
    jw_map_open(w);
    jw_key(w, "name");
    jw_str(w, p->name);
    jw_key(w, "type");
    jw_str(w, p->type);
    jw_key(w, "base_url");
    jw_str(w, p->base_url);
    jw_key(w, "api_keys");
    jw_array_open(w);
    for (size_t i = 0; i < p->n_api_keys; i++) {
        char masked[16];
        if (admin_mask_secret(p->api_keys[i], masked, sizeof(masked)) == 0)
            jw_str(w, masked);
    }
    jw_array_close(w);
    jw_key(w, "models");
    jw_array_open(w);
    for (size_t i = 0; i < p->n_models; i++)
        jw_str(w, p->models[i]);
    jw_array_close(w);
    jw_key(w, "map");
    jw_map_open(w);
    for (size_t i = 0; i < p->n_model_map; i++) {
        jw_key(w, p->model_map[i]->alias);
        jw_str(w, p->model_map[i]->upstream);
    }
    jw_map_close(w);
    jw_key(w, "priority");
    jw_int(w, p->priority);
    jw_key(w, "weight");
    jw_int(w, p->weight);
    jw_key(w, "region");
    if (p->region != NULL && p->region[0] != '\0')
        jw_str(w, p->region);
    else
        jw_null(w);
    jw_key(w, "updated_at");
    jw_time(w, p->updated_at);
    jw_map_close(w);
}

static const char *key_status(const Llmrelay__ApiKey *k, int64_t now)
{
    if (strcmp(k->status, "revoked") == 0)
        return "revoked";
    if (k->expires_at != 0 && k->expires_at <= now)
        return "expired";
    return "active";
}

/* K: the contract's `key show` shape. Never the secret or its hash. */
static void gen_key_fields(jw_t *w, const Llmrelay__ApiKey *k, int64_t now)
{
    jw_key(w, "id");
    jw_str(w, k->id);
    jw_key(w, "name");
    jw_str(w, k->name);
    jw_key(w, "status");
    jw_str(w, key_status(k, now));
    jw_key(w, "created");
    jw_time(w, k->created_at);
    jw_key(w, "prefix");
    jw_str(w, k->prefix);
    jw_key(w, "limits");
    jw_map_open(w);
    jw_key(w, "budget_tokens");
    if (k->has_budget_tokens)
        jw_int(w, k->budget_tokens);
    else
        jw_null(w);
    jw_key(w, "budget_usd");
    if (k->has_budget_usd)
        jw_double(w, k->budget_usd);
    else
        jw_null(w);
    jw_key(w, "rpm");
    if (k->rpm > 0)
        jw_int(w, k->rpm);
    else
        jw_null(w);
    jw_key(w, "tpm");
    if (k->tpm > 0)
        jw_int(w, k->tpm);
    else
        jw_null(w);
    jw_key(w, "models");
    if (k->n_models > 0) {
        jw_array_open(w);
        for (size_t i = 0; i < k->n_models; i++)
            jw_str(w, k->models[i]);
        jw_array_close(w);
    } else {
        jw_null(w);
    }
    jw_key(w, "expires");
    jw_time(w, k->expires_at);
    jw_map_close(w);
    /* Usage comes from the keys' owner nodes (not wired yet): nothing spent so far. */
    jw_key(w, "spent");
    jw_map_open(w);
    jw_key(w, "requests");
    jw_int(w, 0);
    jw_key(w, "input_tokens");
    jw_int(w, 0);
    jw_key(w, "output_tokens");
    jw_int(w, 0);
    jw_key(w, "usd");
    jw_int(w, 0);
    jw_map_close(w);
    jw_key(w, "remaining");
    jw_map_open(w);
    jw_key(w, "tokens");
    if (k->has_budget_tokens)
        jw_int(w, k->budget_tokens);
    else
        jw_null(w);
    jw_key(w, "usd");
    if (k->has_budget_usd)
        jw_double(w, k->budget_usd);
    else
        jw_null(w);
    jw_map_close(w);
    jw_key(w, "revoked");
    jw_time(w, k->revoked_at);
}

static void gen_key(jw_t *w, const Llmrelay__ApiKey *k, int64_t now)
{
    jw_map_open(w);
    gen_key_fields(w, k, now);
    jw_map_close(w);
}

/* ---- JSON reading ---- */

/* Parses the request body as a JSON object. On failure the answer has been sent and NULL
 * is returned. The body is wiped in place either way (it may hold upstream API keys). */
static yajl_val parse_body(admin_req_t *r)
{
    h2o_req_t *req = r->req;
    char *body = req->entity.base;
    size_t len = req->entity.base != NULL ? req->entity.len : 0;
    yajl_val root = NULL;
    const char *problem = NULL;

    if (len == 0)
        problem = "a JSON object body is required";
    else if (memchr(body, '\0', len) != NULL)
        problem = "the body is not valid JSON";
    else if (json_depth(body, len) > ADMIN_MAX_JSON_DEPTH)
        problem = "the body is nested too deeply";
    else {
        char *copy = malloc(len + 1);
        if (copy == NULL) {
            explicit_bzero(body, len);
            send_error(r, 500, "internal_error", "out of memory");
            return NULL;
        }
        memcpy(copy, body, len);
        copy[len] = '\0';
        root = yajl_tree_parse(copy, NULL, 0); /* its error text quotes the input: not used */
        explicit_bzero(copy, len);
        free(copy);
        if (root == NULL)
            problem = "the body is not valid JSON";
        else if (!YAJL_IS_OBJECT(root)) {
            tree_free(root);
            root = NULL;
            problem = "the body must be a JSON object";
        }
    }
    if (len > 0)
        explicit_bzero(body, len);
    if (problem != NULL)
        send_bad_request(r, problem);
    return root;
}

/* Checks that none of the known fields appears twice (which one would count is ambiguous).
 * Unknown fields are ignored (forward compatibility, docs/admin-api.md). The message names
 * the field (one of ours), never a value. */
static bool object_keys_ok(yajl_val obj, const char *const *known, char *msg, size_t msglen)
{
    for (size_t a = 0; known[a] != NULL; a++) {
        int seen = 0;
        for (size_t i = 0; i < obj->u.object.len; i++)
            if (strcmp(obj->u.object.keys[i], known[a]) == 0)
                seen++;
        if (seen > 1) {
            snprintf(msg, msglen, "field \"%s\" appears more than once", known[a]);
            return false;
        }
    }
    return true;
}

static yajl_val field(yajl_val obj, const char *name)
{
    for (size_t i = 0; i < obj->u.object.len; i++)
        if (strcmp(obj->u.object.keys[i], name) == 0)
            return obj->u.object.values[i];
    return NULL;
}

static bool is_null(yajl_val v)
{
    return v == NULL || YAJL_IS_NULL(v);
}

static bool get_int(yajl_val v, int64_t *out)
{
    if (!YAJL_IS_INTEGER(v))
        return false;
    *out = (int64_t)YAJL_GET_INTEGER(v);
    return true;
}

/* Array of distinct-enough labels → a new array of borrowed pointers (free the array only). */
static bool get_string_array(yajl_val v, size_t maxn, size_t maxlen, char ***out, size_t *n)
{
    if (!YAJL_IS_ARRAY(v) || v->u.array.len > maxn)
        return false;
    size_t len = v->u.array.len;
    char **arr = calloc(len > 0 ? len : 1, sizeof(*arr));
    if (arr == NULL)
        return false;
    for (size_t i = 0; i < len; i++) {
        yajl_val s = v->u.array.values[i];
        if (!YAJL_IS_STRING(s) || !label_valid(s->u.string, maxlen)) {
            free(arr);
            return false;
        }
        arr[i] = s->u.string;
    }
    *out = arr;
    *n = len;
    return true;
}

/* ---- the write machinery ---- */

static void write_slot_dispose(void *p)
{
    admin_write_t **slot = p;
    admin_write_t *w = *slot;
    if (w == NULL)
        return;
    w->slot = NULL;
    w->areq = NULL;
    if (h2o_linklist_is_linked(&w->link))
        h2o_linklist_unlink(&w->link);
}

/* Cuts the link between w and its request; returns the request, or NULL if it had gone. */
static admin_req_t *write_detach(admin_write_t *w)
{
    admin_req_t *r = w->areq;
    if (w->slot != NULL)
        *w->slot = NULL;
    w->slot = NULL;
    w->areq = NULL;
    if (h2o_linklist_is_linked(&w->link))
        h2o_linklist_unlink(&w->link);
    return r;
}

static void wipe_provider_keys(Llmrelay__Provider *p)
{
    for (size_t i = 0; i < p->n_api_keys; i++)
        if (p->api_keys[i] != NULL)
            explicit_bzero(p->api_keys[i], strlen(p->api_keys[i]));
}

static void write_free(admin_write_t *w)
{
    if (w->provider != NULL) {
        wipe_provider_keys(w->provider);
        llmrelay__provider__free_unpacked(w->provider, NULL);
    }
    if (w->key != NULL)
        llmrelay__api_key__free_unpacked(w->key, NULL);
    explicit_bzero(w, sizeof(*w));
    free(w);
}

static admin_write_t *write_new(admin_req_t *r, write_kind_t kind)
{
    admin_write_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    admin_write_t **slot = h2o_mem_alloc_shared(&r->req->pool, sizeof(*slot), write_slot_dispose);
    *slot = w;
    w->slot = slot;
    w->areq = r;
    w->kind = kind;
    h2o_linklist_insert(&r->admin->pending, &w->link);
    return w;
}

static void answer_write(admin_req_t *r, admin_write_t *w, int status)
{
    if (status == -ENOENT) {
        send_error(r, 404, "not_found", w->kind == WRITE_PROVIDER_DELETE ? "no such provider" : "no such record");
        return;
    }
    if (status < 0) {
        send_error(r, 503, "etcd_unavailable", "the configuration store (etcd) is unavailable; nothing was changed");
        return;
    }
    jw_t jw;
    if (jw_init(&jw) != 0) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    int http = 200;
    switch (w->kind) {
    case WRITE_PROVIDER_PUT:
        gen_provider(&jw, w->provider);
        break;
    case WRITE_PROVIDER_DELETE:
        jw_map_open(&jw);
        jw_key(&jw, "deleted");
        jw_str(&jw, w->name);
        jw_map_close(&jw);
        break;
    case WRITE_KEY_CREATE:
        http = 201;
        jw_map_open(&jw);
        jw_key(&jw, "key");
        jw_str(&jw, w->secret);
        gen_key_fields(&jw, w->key, now_unix());
        jw_map_close(&jw);
        break;
    case WRITE_KEY_REVOKE:
        gen_key(&jw, w->key, now_unix());
        break;
    }
    send_jw(r, http, &jw);
}

static void on_store_done(config_store_t *s, int status, void *data)
{
    (void)s;
    admin_write_t *w = data;
    admin_req_t *r = write_detach(w);
    if (r != NULL)
        answer_write(r, w, status);
    write_free(w);
}

/* Hands w to the store; from here on the store's callback owns w. */
static void write_submit(admin_req_t *r, admin_write_t *w)
{
    config_store_t *store = r->admin->store;
    int rc;
    switch (w->kind) {
    case WRITE_PROVIDER_PUT:
        rc = config_store_put_provider(store, w->provider, on_store_done, w);
        break;
    case WRITE_PROVIDER_DELETE:
        rc = config_store_delete_provider(store, w->name, on_store_done, w);
        break;
    default:
        rc = config_store_put_key(store, w->key, on_store_done, w);
        break;
    }
    if (rc < 0) {
        /* Not accepted: the callback will not come. */
        admin_req_t *again = write_detach(w);
        if (again != NULL)
            answer_write(again, w, rc == -ENOENT ? -EIO : rc);
        write_free(w);
    }
}

/* ---- handlers ---- */

static const Llmrelay__Snapshot *snapshot(admin_t *a)
{
    return config_store_current(a->store);
}

static const Llmrelay__Provider *find_provider(admin_t *a, const char *name)
{
    const Llmrelay__Snapshot *snap = snapshot(a);
    if (snap == NULL)
        return NULL;
    for (size_t i = 0; i < snap->n_providers; i++)
        if (snap->providers[i]->name != NULL && strcmp(snap->providers[i]->name, name) == 0)
            return snap->providers[i];
    return NULL;
}

static const Llmrelay__ApiKey *find_key(admin_t *a, const char *id)
{
    const Llmrelay__Snapshot *snap = snapshot(a);
    if (snap == NULL)
        return NULL;
    for (size_t i = 0; i < snap->n_keys; i++)
        if (snap->keys[i]->id != NULL && strcmp(snap->keys[i]->id, id) == 0)
            return snap->keys[i];
    return NULL;
}

static void handle_healthz(admin_req_t *r)
{
    static const char body[] = "{\"status\":\"ok\"}";
    send_body(r, 200, body, sizeof(body) - 1, NULL);
}

static void handle_readyz(admin_req_t *r)
{
    admin_t *a = r->admin;
    admin_status_t st = {0};
    if (a->status_cb != NULL)
        a->status_cb(a->status_data, &st);
    bool synced = config_store_synced(a->store);
    bool has = config_store_has_snapshot(a->store);
    bool ready = has && !st.draining;
    jw_t w;
    if (jw_init(&w) != 0) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    jw_map_open(&w);
    jw_key(&w, "ready");
    jw_bool(&w, ready);
    jw_key(&w, "snapshot");
    jw_str(&w, synced && has ? "etcd" : has ? "cached" : "none");
    jw_key(&w, "etcd");
    jw_str(&w, synced ? "ok" : "unreachable");
    jw_key(&w, "draining");
    jw_bool(&w, st.draining);
    jw_key(&w, "revision");
    jw_int(&w, config_store_revision(a->store));
    jw_map_close(&w);
    send_jw(r, ready ? 200 : 503, &w);
}

static int cmp_provider(const void *a, const void *b)
{
    const Llmrelay__Provider *pa = *(Llmrelay__Provider *const *)a, *pb = *(Llmrelay__Provider *const *)b;
    return strcmp(pa->name, pb->name);
}

static int cmp_key(const void *a, const void *b)
{
    const Llmrelay__ApiKey *ka = *(Llmrelay__ApiKey *const *)a, *kb = *(Llmrelay__ApiKey *const *)b;
    if (ka->created_at != kb->created_at)
        return ka->created_at < kb->created_at ? -1 : 1;
    return strcmp(ka->id, kb->id);
}

/* A sorted copy of a snapshot's array of record pointers (free it); NULL when n == 0. */
static void **sorted(void *const *items, size_t n, int (*cmp)(const void *, const void *))
{
    if (n == 0)
        return NULL;
    void **copy = malloc(n * sizeof(*copy));
    if (copy == NULL)
        return NULL;
    memcpy(copy, items, n * sizeof(*copy));
    qsort(copy, n, sizeof(*copy), cmp);
    return copy;
}

static void handle_provider_list(admin_req_t *r)
{
    const Llmrelay__Snapshot *snap = snapshot(r->admin);
    size_t n = snap != NULL ? snap->n_providers : 0;
    Llmrelay__Provider **list =
        n > 0 ? (Llmrelay__Provider **)sorted((void *const *)snap->providers, n, cmp_provider) : NULL;
    jw_t w;
    if ((n > 0 && list == NULL) || jw_init(&w) != 0) {
        free(list);
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    jw_map_open(&w);
    jw_key(&w, "providers");
    jw_array_open(&w);
    for (size_t i = 0; i < n; i++)
        gen_provider(&w, list[i]);
    free(list);
    jw_array_close(&w);
    jw_map_close(&w);
    send_jw(r, 200, &w);
}

static void handle_provider_get(admin_req_t *r, const char *name)
{
    const Llmrelay__Provider *p = find_provider(r->admin, name);
    if (p == NULL) {
        send_error(r, 404, "not_found", "no such provider");
        return;
    }
    jw_t w;
    if (jw_init(&w) != 0) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    gen_provider(&w, p);
    send_jw(r, 200, &w);
}

/* Builds the provider record from a PUT body. Returns NULL with msg set on a bad body; the
 * record is a heap copy owned by the caller (its strings no longer point into the tree). */
static Llmrelay__Provider *provider_from_json(yajl_val root, const char *name, char *msg, size_t msglen)
{
    static const char *const allowed[] = {"type",     "base_url", "api_keys", "models", "map",
                                          "priority", "weight",   "region",   NULL};
    if (!object_keys_ok(root, allowed, msg, msglen))
        return NULL;

    Llmrelay__Provider p = LLMRELAY__PROVIDER__INIT;
    Llmrelay__ModelMap *maps = NULL;
    Llmrelay__ModelMap **map_ptrs = NULL;
    Llmrelay__Provider *copy = NULL;
    uint8_t *packed = NULL;
    size_t packed_len = 0;
    yajl_val v;

    p.name = (char *)name; /* from the path only; a "name" in the body is ignored */

    v = field(root, "type");
    if (v == NULL || !YAJL_IS_STRING(v) ||
        (strcmp(v->u.string, "openai") != 0 && strcmp(v->u.string, "anthropic") != 0 &&
         strcmp(v->u.string, "gemini") != 0)) {
        snprintf(msg, msglen, "\"type\" must be one of openai, anthropic, gemini");
        goto out;
    }
    p.type = v->u.string;

    v = field(root, "base_url");
    if (v == NULL || !YAJL_IS_STRING(v) || !label_valid(v->u.string, ADMIN_MAX_URL) ||
        strchr(v->u.string, ' ') != NULL ||
        !((strncasecmp(v->u.string, "http://", 7) == 0 && v->u.string[7] != '\0') ||
          (strncasecmp(v->u.string, "https://", 8) == 0 && v->u.string[8] != '\0'))) {
        snprintf(msg, msglen, "\"base_url\" must be an http:// or https:// URL");
        goto out;
    }
    p.base_url = v->u.string;
    for (size_t bl = strlen(p.base_url); bl > 8 && p.base_url[bl - 1] == '/'; bl--)
        p.base_url[bl - 1] = '\0'; /* "https://x/v1/" → "https://x/v1" */

    v = field(root, "api_keys");
    if (v == NULL ||
        !get_string_array(v, ADMIN_MAX_UPSTREAM_KEYS, ADMIN_MAX_UPSTREAM_KEY, &p.api_keys, &p.n_api_keys) ||
        p.n_api_keys == 0) {
        snprintf(msg, msglen, "\"api_keys\" must be an array of 1..%d non-empty strings", ADMIN_MAX_UPSTREAM_KEYS);
        goto out;
    }

    v = field(root, "models");
    if (v == NULL || !get_string_array(v, ADMIN_MAX_LIST, ADMIN_MAX_MODEL, &p.models, &p.n_models) || p.n_models == 0) {
        snprintf(msg, msglen, "\"models\" must be an array of 1..%d model names", ADMIN_MAX_LIST);
        goto out;
    }

    v = field(root, "map");
    if (!is_null(v)) {
        if (!YAJL_IS_OBJECT(v) || v->u.object.len > ADMIN_MAX_LIST) {
            snprintf(msg, msglen, "\"map\" must be an object of alias: upstream model names");
            goto out;
        }
        size_t n = v->u.object.len;
        maps = calloc(n > 0 ? n : 1, sizeof(*maps));
        map_ptrs = calloc(n > 0 ? n : 1, sizeof(*map_ptrs));
        if (maps == NULL || map_ptrs == NULL) {
            snprintf(msg, msglen, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            const char *alias = v->u.object.keys[i];
            yajl_val up = v->u.object.values[i];
            if (!label_valid(alias, ADMIN_MAX_MODEL) || !YAJL_IS_STRING(up) ||
                !label_valid(up->u.string, ADMIN_MAX_MODEL)) {
                snprintf(msg, msglen, "\"map\" must be an object of alias: upstream model names");
                goto out;
            }
            for (size_t j = 0; j < i; j++) {
                if (strcmp(alias, v->u.object.keys[j]) == 0) {
                    snprintf(msg, msglen, "\"map\" names an alias twice");
                    goto out;
                }
            }
            llmrelay__model_map__init(&maps[i]);
            maps[i].alias = (char *)alias;
            maps[i].upstream = up->u.string;
            map_ptrs[i] = &maps[i];
        }
        p.model_map = map_ptrs;
        p.n_model_map = n;
    }

    int64_t num = 0;
    v = field(root, "priority");
    if (!is_null(v)) {
        if (!get_int(v, &num) || num < -ADMIN_MAX_PRIORITY || num > ADMIN_MAX_PRIORITY) {
            snprintf(msg, msglen, "\"priority\" must be an integer from -%d to %d", ADMIN_MAX_PRIORITY,
                     ADMIN_MAX_PRIORITY);
            goto out;
        }
        p.priority = (int32_t)num;
    }
    p.weight = 1;
    v = field(root, "weight");
    if (!is_null(v)) {
        if (!get_int(v, &num) || num < 0 || num > ADMIN_MAX_WEIGHT) {
            snprintf(msg, msglen, "\"weight\" must be an integer from 0 to %d", ADMIN_MAX_WEIGHT);
            goto out;
        }
        p.weight = (int32_t)num;
    }
    v = field(root, "region");
    if (!is_null(v)) {
        if (!YAJL_IS_STRING(v) || (v->u.string[0] != '\0' && !label_valid(v->u.string, ADMIN_MAX_NAME))) {
            snprintf(msg, msglen, "\"region\" must be null or a string of at most %d characters", ADMIN_MAX_NAME);
            goto out;
        }
        p.region = v->u.string;
    }
    p.updated_at = now_unix();

    packed_len = llmrelay__provider__get_packed_size(&p);
    packed = malloc(packed_len > 0 ? packed_len : 1);
    if (packed == NULL) {
        snprintf(msg, msglen, "out of memory");
        goto out;
    }
    llmrelay__provider__pack(&p, packed);
    copy = llmrelay__provider__unpack(NULL, packed_len, packed);
    if (copy == NULL)
        snprintf(msg, msglen, "out of memory");

out:
    if (packed != NULL) {
        explicit_bzero(packed, packed_len);
        free(packed);
    }
    free(p.api_keys);
    free(p.models);
    free(maps);
    free(map_ptrs);
    return copy;
}

static void handle_provider_put(admin_req_t *r, const char *name)
{
    yajl_val root = parse_body(r);
    if (root == NULL)
        return;
    char msg[160] = "";
    Llmrelay__Provider *p = provider_from_json(root, name, msg, sizeof(msg));
    tree_free(root);
    if (p == NULL) {
        send_bad_request(r, msg);
        return;
    }
    admin_write_t *w = write_new(r, WRITE_PROVIDER_PUT);
    if (w == NULL) {
        wipe_provider_keys(p);
        llmrelay__provider__free_unpacked(p, NULL);
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    w->provider = p;
    write_submit(r, w);
}

static void handle_provider_delete(admin_req_t *r, const char *name)
{
    if (find_provider(r->admin, name) == NULL) {
        send_error(r, 404, "not_found", "no such provider");
        return;
    }
    admin_write_t *w = write_new(r, WRITE_PROVIDER_DELETE);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    snprintf(w->name, sizeof(w->name), "%s", name);
    write_submit(r, w);
}

static void handle_key_list(admin_req_t *r)
{
    const Llmrelay__Snapshot *snap = snapshot(r->admin);
    int64_t now = now_unix();
    size_t n = snap != NULL ? snap->n_keys : 0;
    Llmrelay__ApiKey **list = n > 0 ? (Llmrelay__ApiKey **)sorted((void *const *)snap->keys, n, cmp_key) : NULL;
    jw_t w;
    if ((n > 0 && list == NULL) || jw_init(&w) != 0) {
        free(list);
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    jw_map_open(&w);
    jw_key(&w, "keys");
    jw_array_open(&w);
    for (size_t i = 0; i < n; i++)
        gen_key(&w, list[i], now);
    free(list);
    jw_array_close(&w);
    jw_map_close(&w);
    send_jw(r, 200, &w);
}

static void handle_key_get(admin_req_t *r, const char *id)
{
    const Llmrelay__ApiKey *k = find_key(r->admin, id);
    if (k == NULL) {
        send_error(r, 404, "not_found", "no such key");
        return;
    }
    jw_t w;
    if (jw_init(&w) != 0) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    gen_key(&w, k, now_unix());
    send_jw(r, 200, &w);
}

static Llmrelay__ApiKey *key_copy(const Llmrelay__ApiKey *k)
{
    size_t len = llmrelay__api_key__get_packed_size(k);
    uint8_t *buf = malloc(len > 0 ? len : 1);
    if (buf == NULL)
        return NULL;
    llmrelay__api_key__pack(k, buf);
    Llmrelay__ApiKey *copy = llmrelay__api_key__unpack(NULL, len, buf);
    free(buf);
    return copy;
}

/* Reads the key create body into k (borrowing strings from root). */
static bool key_from_json(yajl_val root, Llmrelay__ApiKey *k, char ***models, char *msg, size_t msglen)
{
    static const char *const allowed[] = {"name",       "models", "expires", "budget_tokens",
                                          "budget_usd", "rpm",    "tpm",     NULL};
    if (!object_keys_ok(root, allowed, msg, msglen))
        return false;
    yajl_val v = field(root, "name");
    if (v == NULL || !YAJL_IS_STRING(v) || !label_valid(v->u.string, ADMIN_MAX_KEY_NAME)) {
        snprintf(msg, msglen, "\"name\" must be a non-empty string of at most %d bytes", ADMIN_MAX_KEY_NAME);
        return false;
    }
    k->name = v->u.string;
    v = field(root, "models");
    if (!is_null(v)) {
        if (!get_string_array(v, ADMIN_MAX_LIST, ADMIN_MAX_MODEL, models, &k->n_models) || k->n_models == 0) {
            snprintf(msg, msglen, "\"models\" must be null or an array of 1..%d model names", ADMIN_MAX_LIST);
            return false;
        }
        k->models = *models;
    }
    v = field(root, "expires");
    if (!is_null(v)) {
        int64_t at;
        if (!YAJL_IS_STRING(v) || util_parse_rfc3339(v->u.string, &at) != 0) {
            snprintf(msg, msglen, "\"expires\" must be null or an RFC 3339 time");
            return false;
        }
        k->expires_at = at;
    }
    int64_t num;
    v = field(root, "budget_tokens");
    if (!is_null(v)) {
        if (!get_int(v, &num) || num < 0) {
            snprintf(msg, msglen, "\"budget_tokens\" must be null or a non-negative integer");
            return false;
        }
        k->has_budget_tokens = true;
        k->budget_tokens = num;
    }
    v = field(root, "budget_usd");
    if (!is_null(v)) {
        if (!YAJL_IS_DOUBLE(v) || !isfinite(YAJL_GET_DOUBLE(v)) || YAJL_GET_DOUBLE(v) < 0) {
            snprintf(msg, msglen, "\"budget_usd\" must be null or a non-negative number");
            return false;
        }
        k->has_budget_usd = true;
        k->budget_usd = YAJL_GET_DOUBLE(v);
    }
    static const char *const rates[] = {"rpm", "tpm"};
    for (int i = 0; i < 2; i++) {
        v = field(root, rates[i]);
        if (is_null(v))
            continue;
        if (!get_int(v, &num) || num < 1) {
            snprintf(msg, msglen, "\"%s\" must be null or a positive integer", rates[i]);
            return false;
        }
        if (i == 0)
            k->rpm = num;
        else
            k->tpm = num;
    }
    return true;
}

static void handle_key_create(admin_req_t *r)
{
    yajl_val root = parse_body(r);
    if (root == NULL)
        return;
    Llmrelay__ApiKey k = LLMRELAY__API_KEY__INIT;
    char **models = NULL;
    char msg[160] = "";
    bool ok = key_from_json(root, &k, &models, msg, sizeof(msg));
    Llmrelay__ApiKey *copy = NULL;
    admin_write_t *w = NULL;
    if (ok) {
        w = write_new(r, WRITE_KEY_CREATE);
        uint8_t raw[ADMIN_KEY_SECRET_BYTES], idraw[8];
        char hash[65], id[4 + 16 + 1], prefix[ADMIN_KEY_PREFIX_SHOWN + 1];
        if (w != NULL && util_random_bytes(raw, sizeof(raw)) == 0 && util_random_bytes(idraw, sizeof(idraw)) == 0) {
            size_t pl = strlen(ADMIN_KEY_PREFIX);
            memcpy(w->secret, ADMIN_KEY_PREFIX, pl);
            size_t n = util_base64url(raw, sizeof(raw), w->secret + pl, sizeof(w->secret) - pl);
            if (n > 0) {
                util_sha256_hex(w->secret, pl + n, hash);
                memcpy(prefix, w->secret, ADMIN_KEY_PREFIX_SHOWN);
                prefix[ADMIN_KEY_PREFIX_SHOWN] = '\0';
                memcpy(id, "key_", 4);
                for (size_t i = 0; i < sizeof(idraw); i++)
                    snprintf(id + 4 + 2 * i, 3, "%02x", idraw[i]);
                k.id = id;
                k.hash = hash;
                k.prefix = prefix;
                k.status = "active";
                k.created_at = now_unix();
                copy = key_copy(&k);
            }
        }
        explicit_bzero(raw, sizeof(raw));
        explicit_bzero(hash, sizeof(hash));
    }
    free(models);
    tree_free(root);
    if (!ok) {
        send_bad_request(r, msg);
        return;
    }
    if (copy == NULL) {
        if (w != NULL) {
            write_detach(w);
            write_free(w);
        }
        send_error(r, 500, "internal_error", "could not create the key");
        return;
    }
    w->key = copy;
    write_submit(r, w);
}

static void handle_key_revoke(admin_req_t *r, const char *id)
{
    const Llmrelay__ApiKey *k = find_key(r->admin, id);
    if (k == NULL) {
        send_error(r, 404, "not_found", "no such key");
        return;
    }
    if (strcmp(k->status, "revoked") == 0) { /* idempotent: nothing to write */
        jw_t w;
        if (jw_init(&w) != 0) {
            send_error(r, 500, "internal_error", "out of memory");
            return;
        }
        gen_key(&w, k, now_unix());
        send_jw(r, 200, &w);
        return;
    }
    Llmrelay__ApiKey revoked = *k;
    revoked.status = "revoked";
    revoked.revoked_at = now_unix();
    Llmrelay__ApiKey *copy = key_copy(&revoked);
    admin_write_t *w = copy != NULL ? write_new(r, WRITE_KEY_REVOKE) : NULL;
    if (w == NULL) {
        if (copy != NULL)
            llmrelay__api_key__free_unpacked(copy, NULL);
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    w->key = copy;
    write_submit(r, w);
}

/* ---- auth ---- */

typedef enum { ROLE_NONE, ROLE_VIEWER, ROLE_OPERATOR, ROLE_ADMIN } role_t;

/* Returns the role of the presented token (ROLE_NONE when unknown) and its name. */
static role_t authenticate(admin_req_t *r, bool *any_configured)
{
    admin_t *a = r->admin;
    h2o_req_t *req = r->req;
    const Llmrelay__Snapshot *snap = snapshot(a);
    *any_configured = a->has_bootstrap || (snap != NULL && snap->n_tokens > 0);

    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (i < 0)
        return ROLE_NONE;
    h2o_iovec_t *value = &req->headers.entries[i].value;
    role_t role = ROLE_NONE;
    if (value->len > 7 && value->len <= 7 + ADMIN_MAX_TOKEN_FILE && strncasecmp(value->base, "Bearer ", 7) == 0) {
        const char *tok = value->base + 7;
        size_t len = value->len - 7;
        while (len > 0 && *tok == ' ')
            tok++, len--;
        while (len > 0 && tok[len - 1] == ' ')
            len--;
        char hash[65];
        util_sha256_hex(tok, len, hash);
        if (len > 0 && a->has_bootstrap && util_ct_equal(hash, a->bootstrap_hash, 64)) {
            role = ROLE_ADMIN;
            r->token_name = "bootstrap";
        }
        for (size_t t = 0; len > 0 && snap != NULL && t < snap->n_tokens; t++) {
            const Llmrelay__AdminToken *at = snap->tokens[t];
            if (role != ROLE_NONE || at->hash == NULL || strlen(at->hash) != 64)
                continue;
            if (!util_ct_equal(hash, at->hash, 64))
                continue;
            if (strcmp(at->role, "admin") == 0)
                role = ROLE_ADMIN;
            else if (strcmp(at->role, "operator") == 0)
                role = ROLE_OPERATOR;
            else if (strcmp(at->role, "viewer") == 0)
                role = ROLE_VIEWER;
            else
                continue; /* unknown role: grants nothing */
            char name[65];
            sanitize_for_log(at->name, strlen(at->name), name, sizeof(name));
            r->token_name = h2o_strdup(&req->pool, name, SIZE_MAX).base;
        }
        explicit_bzero(hash, sizeof(hash));
    }
    /* HTTP/1: the header value lives in the connection's input buffer; wipe it. (On h2 it
     * may be shared with the HPACK table, which must stay intact.) */
    if (req->version < 0x200)
        explicit_bzero(value->base, value->len);
    return role;
}

/* ---- routing ---- */

static bool method_is(h2o_req_t *req, const char *m)
{
    return h2o_memis(req->method.base, req->method.len, m, strlen(m));
}

/* Copies segment i (0-based) of rest into out; returns its length or -1 when absent/too long. */
static int route_segments(const char *path, size_t len, char segs[3][ADMIN_MAX_NAME + 2], size_t *nsegs)
{
    *nsegs = 0;
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && path[i] != '/')
            i++;
        size_t n = i - start;
        if (n == 0) /* "//" or a trailing '/' */
            return i < len ? -1 : 0;
        if (*nsegs == 3 || n > ADMIN_MAX_NAME + 1)
            return -1;
        memcpy(segs[*nsegs], path + start, n);
        segs[*nsegs][n] = '\0';
        (*nsegs)++;
        if (i < len)
            i++; /* skip '/' */
    }
    return 0;
}

static void method_not_allowed(admin_req_t *r, const char *allow)
{
    send_error_allow(r, 405, "method_not_allowed", "method not allowed on this path", allow);
}

static void forbidden(admin_req_t *r)
{
    send_error(r, 403, "forbidden", "this token's role (viewer) may only read");
}

static void payload_too_large(admin_req_t *r)
{
    send_error(r, 413, "request_too_large", "the request body is larger than 1 MiB");
}

static void route_admin(admin_req_t *r, const char *rest, size_t len, role_t role)
{
    h2o_req_t *req = r->req;
    char segs[3][ADMIN_MAX_NAME + 2];
    size_t n;
    bool get = method_is(req, "GET");
    bool writer = role != ROLE_VIEWER;
    bool too_large = req->entity.base != NULL && req->entity.len > ADMIN_MAX_BODY;

    if (route_segments(rest, len, segs, &n) != 0 || n == 0) {
        send_error(r, 404, "not_found", "no such admin endpoint");
    } else if (strcmp(segs[0], "providers") == 0 && n == 1) {
        if (get)
            handle_provider_list(r);
        else
            method_not_allowed(r, "GET");
    } else if (strcmp(segs[0], "providers") == 0 && n == 2) {
        bool put = method_is(req, "PUT"), del = method_is(req, "DELETE");
        if (!get && !put && !del)
            method_not_allowed(r, "GET, PUT, DELETE");
        else if (!admin_name_valid(segs[1], strlen(segs[1])))
            if (put)
                send_bad_request(r, "a provider name is 1..64 characters of [A-Za-z0-9._-]");
            else
                send_error(r, 404, "not_found", "no such provider");
        else if (get)
            handle_provider_get(r, segs[1]);
        else if (!writer)
            forbidden(r);
        else if (put && too_large)
            payload_too_large(r);
        else if (put)
            handle_provider_put(r, segs[1]);
        else
            handle_provider_delete(r, segs[1]);
    } else if (strcmp(segs[0], "keys") == 0 && n == 1) {
        if (get)
            handle_key_list(r);
        else if (!method_is(req, "POST"))
            method_not_allowed(r, "GET, POST");
        else if (!writer)
            forbidden(r);
        else if (too_large)
            payload_too_large(r);
        else
            handle_key_create(r);
    } else if (strcmp(segs[0], "keys") == 0 && n == 2) {
        if (!get)
            method_not_allowed(r, "GET");
        else if (!admin_name_valid(segs[1], strlen(segs[1])))
            send_error(r, 404, "not_found", "no such key");
        else
            handle_key_get(r, segs[1]);
    } else if (strcmp(segs[0], "keys") == 0 && n == 3 && strcmp(segs[2], "revoke") == 0) {
        if (!method_is(req, "POST"))
            method_not_allowed(r, "POST");
        else if (!writer)
            forbidden(r);
        else if (!admin_name_valid(segs[1], strlen(segs[1])))
            send_error(r, 404, "not_found", "no such key");
        else
            handle_key_revoke(r, segs[1]);
    } else {
        send_error(r, 404, "not_found", "no such admin endpoint");
    }
    if (req->entity.base != NULL && req->entity.len > 0)
        explicit_bzero(req->entity.base, req->entity.len); /* whatever was not parsed */
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    admin_t *a = ((admin_handler_t *)self)->admin;
    admin_req_t *r = h2o_mem_alloc_pool(&req->pool, sizeof(*r));
    r->admin = a;
    r->req = req;
    r->token_name = "-";
    ssize_t hi = h2o_find_header_by_str(&req->headers, H2O_STRLIT("x-request-id"), -1);
    if (hi >= 0 && util_request_id_sane(req->headers.entries[hi].value.base, req->headers.entries[hi].value.len)) {
        memcpy(r->request_id, req->headers.entries[hi].value.base, req->headers.entries[hi].value.len);
        r->request_id[req->headers.entries[hi].value.len] = '\0';
    } else {
        util_request_id_new(r->request_id);
    }

    if (a->stopping) {
        send_error(r, 503, "shutting_down", "the admin listener is shutting down");
        return 0;
    }
    const char *path = req->path_normalized.base;
    size_t len = req->path_normalized.len;
    if (h2o_memis(path, len, H2O_STRLIT("/healthz")) || h2o_memis(path, len, H2O_STRLIT("/readyz"))) {
        if (!method_is(req, "GET")) {
            method_not_allowed(r, "GET");
            return 0;
        }
        if (path[1] == 'h')
            handle_healthz(r);
        else
            handle_readyz(r);
        return 0;
    }
    static const char prefix[] = "/admin/v1";
    size_t pl = sizeof(prefix) - 1;
    if (len < pl || memcmp(path, prefix, pl) != 0 || (len > pl && path[pl] != '/')) {
        send_error(r, 404, "not_found", "not found");
        return 0;
    }
    bool configured;
    role_t role = authenticate(r, &configured);
    if (!configured) {
        send_error(r, 401, "invalid_token",
                   "no admin token is configured on this node (start it with --admin-token-file)");
        return 0;
    }
    if (role == ROLE_NONE) {
        send_error(r, 401, "invalid_token", "missing or invalid admin token (Authorization: Bearer <token>)");
        return 0;
    }
    size_t skip = len > pl ? pl + 1 : pl;
    route_admin(r, path + skip, len - skip, role);
    return 0;
}

/* ---- listener and connections ---- */

static void admin_free_cb(uv_handle_t *h)
{
    admin_t *a = h->data;
    free(a);
}

static void admin_reap_cb(uv_handle_t *h)
{
    /* The h2o context's timers were closed in the closing phase that ran this callback (or an
     * earlier one); closing another handle now defers the free past that phase for sure. */
    admin_t *a = h->data;
    uv_idle_init(a->loop, &a->reaper[1]);
    a->reaper[1].data = a;
    uv_close((uv_handle_t *)&a->reaper[1], admin_free_cb);
}

/* Runs from a close callback, when nothing of ours is open any more. */
static void admin_finish(admin_t *a)
{
    if (a->finishing)
        return;
    a->finishing = true;
    uv_idle_init(a->loop, &a->reaper[0]);
    a->reaper[0].data = a;
    uv_close((uv_handle_t *)&a->reaper[0], admin_reap_cb);
    /* h2o_context_dispose runs the loop once (UV_RUN_NOWAIT) to close its timers; that
     * would clear a pending uv_stop, so restore it. */
    unsigned int stop = a->loop->stop_flag;
    h2o_context_dispose(&a->ctx);
    if (stop)
        uv_stop(a->loop);
    h2o_config_dispose(&a->globalconf);
}

static void maybe_finish(admin_t *a)
{
    if (a->stopping && a->listener_closed && a->num_conns == 0)
        admin_finish(a);
}

static void on_listener_close(uv_handle_t *h)
{
    admin_t *a = H2O_STRUCT_FROM_MEMBER(admin_t, listener, h);
    a->listener_closed = true;
    maybe_finish(a);
}

static void on_conn_close(uv_handle_t *h)
{
    admin_conn_t *c = (admin_conn_t *)h;
    admin_t *a = c->admin;
    h2o_linklist_unlink(&c->link);
    free(c);
    a->num_conns--;
    maybe_finish(a);
}

static void on_raw_close(uv_handle_t *h)
{
    on_conn_close(h);
}

static void on_connection(uv_stream_t *listener, int status)
{
    admin_t *a = H2O_STRUCT_FROM_MEMBER(admin_t, listener, listener);
    if (status != 0 || a->stopping)
        return;
    admin_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->admin = a;
    uv_tcp_init(a->loop, &c->tcp);
    h2o_linklist_insert(&a->conns, &c->link);
    a->num_conns++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 || a->num_conns > ADMIN_MAX_CONNS) {
        uv_close((uv_handle_t *)&c->tcp, on_raw_close);
        return;
    }
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&c->tcp, on_conn_close);
    h2o_accept(&a->accept_ctx, sock);
}

static int read_bootstrap_token(admin_t *a, const char *path, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    int rc = util_read_file(path, ADMIN_MAX_TOKEN_FILE, &text, &len);
    if (rc != 0) {
        snprintf(err, errlen, "admin token file %s: %s", path, rc == -EFBIG ? "too large" : strerror(-rc));
        return rc;
    }
    util_trim_newline(text);
    size_t tlen = strlen(text);
    if (tlen == 0) {
        explicit_bzero(text, len);
        free(text);
        snprintf(err, errlen, "admin token file %s is empty", path);
        return -EINVAL;
    }
    util_sha256_hex(text, tlen, a->bootstrap_hash);
    a->has_bootstrap = true;
    explicit_bzero(text, len);
    free(text);
    return 0;
}

static int open_listener(const char *addr, int *fd_out, int *port_out, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (addr == NULL || util_parse_hostport(addr, &ss, &sslen) != 0) {
        snprintf(err, errlen, "admin listen address \"%s\" is not ADDR:PORT", addr != NULL ? addr : "");
        return -EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "admin listener %s: socket: %s", addr, strerror(e));
        return -e;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sslen) != 0 || listen(fd, 128) != 0) {
        int e = errno;
        close(fd);
        snprintf(err, errlen, "admin listener %s: %s", addr, strerror(e));
        return -e;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    *port_out = 0;
    if (getsockname(fd, (struct sockaddr *)&bound, &blen) == 0) {
        if (bound.ss_family == AF_INET)
            *port_out = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        else if (bound.ss_family == AF_INET6)
            *port_out = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    }
    *fd_out = fd;
    return 0;
}

int admin_start(uv_loop_t *loop, const llmrelay_config_t *cfg, config_store_t *store, admin_status_cb status_cb,
                void *status_data, admin_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (errlen > 0)
        err[0] = '\0';
    admin_t *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err, errlen, "admin: out of memory");
        return -ENOMEM;
    }
    a->loop = loop;
    a->store = store;
    a->status_cb = status_cb;
    a->status_data = status_data;
    h2o_linklist_init_anchor(&a->conns);
    h2o_linklist_init_anchor(&a->pending);

    int rc;
    if (cfg->admin_token_file != NULL && (rc = read_bootstrap_token(a, cfg->admin_token_file, err, errlen)) != 0) {
        free(a);
        return rc;
    }
    int fd;
    if ((rc = open_listener(cfg->admin_listen, &fd, &a->port, err, errlen)) != 0) {
        explicit_bzero(a, sizeof(*a));
        free(a);
        return rc;
    }

    h2o_config_init(&a->globalconf);
    /* Above the 1 MiB limit so that a moderately larger body gets a JSON 413 from us. */
    a->globalconf.max_request_entity_size = 4 * ADMIN_MAX_BODY;
    a->globalconf.server_name = h2o_iovec_init(H2O_STRLIT("llmrelay"));
    h2o_hostconf_t *host = h2o_config_register_host(&a->globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pathconf = h2o_config_register_path(host, "/", 0);
    admin_handler_t *handler = (admin_handler_t *)h2o_create_handler(pathconf, sizeof(*handler));
    handler->super.on_req = on_req;
    handler->admin = a;
    h2o_context_init(&a->ctx, loop, &a->globalconf);
    a->accept_ctx.ctx = &a->ctx;
    a->accept_ctx.hosts = a->globalconf.hosts;

    uv_tcp_init(loop, &a->listener);
    if ((rc = uv_tcp_open(&a->listener, fd)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&a->listener, 128, on_connection)) != 0) {
        snprintf(err, errlen, "admin listener %s: %s", cfg->admin_listen, uv_strerror(rc));
        if (rc != 0 && uv_fileno((uv_handle_t *)&a->listener, &(uv_os_fd_t){0}) != 0)
            close(fd);
        admin_stop(a); /* frees a once the loop runs */
        return rc;
    }
    log_info("admin listening on %s (port %d)%s", cfg->admin_listen, a->port,
             a->has_bootstrap ? "" : " (no bootstrap token: only tokens from etcd are accepted)");
    *out = a;
    return 0;
}

int admin_port(const admin_t *a)
{
    return a->port;
}

void admin_stop(admin_t *a)
{
    if (a == NULL || a->stopping)
        return;
    a->stopping = true;
    uv_close((uv_handle_t *)&a->listener, on_listener_close);
    while (!h2o_linklist_is_empty(&a->pending)) {
        admin_write_t *w = H2O_STRUCT_FROM_MEMBER(admin_write_t, link, a->pending.next);
        admin_req_t *r = write_detach(w); /* the store's callback will only free w */
        if (r != NULL)
            send_error(r, 503, "shutting_down",
                       "the admin listener is shutting down; the write may or may not "
                       "have been applied");
    }
    /* Shutting the sockets down makes h2o see end-of-stream (or a write error) and close
     * each connection through its own path, which ends in on_conn_close. */
    for (h2o_linklist_t *l = a->conns.next; l != &a->conns; l = l->next) {
        admin_conn_t *c = H2O_STRUCT_FROM_MEMBER(admin_conn_t, link, l);
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            shutdown(fd, SHUT_RDWR);
    }
}
