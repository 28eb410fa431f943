/* admin.c — the admin API listener (see admin.h and docs/admin-api.md).
 *
 * How it works: one h2o context on the node's main uv loop, one catch-all handler that
 * routes by path. Config reads are answered at once from config_store_current(). Writes
 * build a record, hand it to the config store (or to etcd directly: prices, token
 * deletion, key rotation and revocation as one txn) and answer from the completion
 * callback; prices and the audit log are read from etcd directly; logs, usage and drains are
 * asked of the node (admin_node_ops_t) and its JSON answer relayed. Every one of those waits is an
 * admin_write_t on the heap; it and its request point at each other through a slot in the
 * request pool whose dispose callback cuts the link, so a client that leaves, or
 * admin_stop, makes the later callback a no-op that just frees the write.
 *
 * Audit: the admin_req_t of every /admin/v1/ call lives in the request pool with a dispose
 * callback; when the request ends (answered, or its client gone: status 499) it becomes an
 * AuditEntry pushed onto a bounded in-memory queue. A zero timer flushes the queue to etcd
 * in txns of at most AUDIT_BATCH puts, one txn in flight at a time; a failed txn is
 * retried with backoff, the entries stay queued (oldest first); a full queue drops new
 * entries and counts them. The entry names the token (not the token), the role, the action
 * as METHOD + path template, a target (a validated id or name, never a secret), the status,
 * the operator's IP truncated to /24 or /48 and the request id.
 *
 * Secrets: presented tokens are only hashed (SHA-256) and compared in constant time; a new
 * key's or token's secret exists in the write context and in the response buffer, both
 * wiped; request bodies (which may hold upstream API keys) are wiped in place once parsed,
 * as are the strings of the parse tree and every buffer yajl_gen used. Upstream API keys are
 * answered masked, never in full. Log lines name the method, a sanitised path, the status
 * and the token's name: never a token, a secret or a body.
 *
 * Time: every "now" (created/updated times, grace, expiry status, audit timestamps and the
 * sweep cutoff) comes from the node's injectable clock (ops.now_ms).
 *
 * Shutdown: admin_stop closes the listener, answers pending requests with 503, cancels its
 * etcd requests and shuts the connections' sockets down so h2o closes them. When the last
 * close callback has run, the h2o context is disposed; its timers close asynchronously, so
 * the admin_t is freed from a close callback two closing phases later. */
#include "node/admin.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
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
#define ADMIN_MAX_NAME 64      /* provider names, token names, regions */
#define ADMIN_MAX_KEY_NAME 128 /* relay key names */
#define ADMIN_MAX_MODEL 256    /* model names and aliases */
#define ADMIN_MAX_PRICE_MODEL 128
#define ADMIN_MAX_SEGMENT 128 /* longest path segment routed */
#define ADMIN_MAX_URL 1024
#define ADMIN_MAX_UPSTREAM_KEY 512
#define ADMIN_MAX_LIST 1024 /* models, map entries */
#define ADMIN_MAX_UPSTREAM_KEYS 64
#define ADMIN_MAX_PRIORITY 1000000
#define ADMIN_MAX_WEIGHT 1000000
#define ADMIN_MAX_PRICE 1000000.0 /* USD per 1M tokens */
#define ADMIN_KEY_SECRET_BYTES 32
#define ADMIN_KEY_PREFIX "sk-lr-"
#define ADMIN_KEY_PREFIX_SHOWN 10 /* "sk-lr-" + 4 characters */
#define ADMIN_TOKEN_PREFIX "lrt-"
#define ADMIN_DEFAULT_GRACE_MS (24LL * 3600 * 1000)
#define ADMIN_MAX_GRACE_MS (30LL * 24 * 3600 * 1000)
#define ADMIN_DEFAULT_SINCE_MS (24LL * 3600 * 1000)
#define ADMIN_MAX_QUERY_VALUE 256
#define ADMIN_LOGS_DEFAULT_LIMIT 100
#define ADMIN_LOGS_MAX_LIMIT 1000
#define ADMIN_AUDIT_DEFAULT_LIMIT 1000
#define ADMIN_AUDIT_MAX_LIMIT 10000
#define ADMIN_MAX_PRICES 100000
#define AUDIT_BATCH 128 /* ops per etcd txn (DESIGN.md) */
#define AUDIT_RETRY_MIN_MS 250
#define AUDIT_RETRY_MAX_MS 10000

/* One queued audit entry: its etcd key and packed AuditEntry, in one allocation. */
typedef struct audit_item {
    size_t key_len, value_len;
    uint8_t bytes[]; /* key, then value */
} audit_item_t;

struct admin {
    uv_loop_t *loop;
    config_store_t *store;
    admin_node_ops_t ops;
    etcd_client_t *etcd; /* ops.etcd */
    char prefix[260];    /* etcd prefix, ends with '/' */
    size_t prefix_len;
    char node[72];
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
    h2o_linklist_t pending; /* admin_write_t.link: requests waiting for the store, etcd or node */
    bool has_bootstrap;
    char bootstrap_hash[65];
    /* audit queue: a ring of ADMIN_AUDIT_MAX_BUFFERED pointers */
    audit_item_t **audit_ring;
    size_t audit_head, audit_count;
    size_t audit_inflight; /* entries at the head carried by the txn in flight */
    uint64_t audit_seq, audit_dropped;
    unsigned audit_failures;
    uv_timer_t audit_timer;
    bool audit_timer_closed;
    bool sweeping;
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

typedef enum { ROLE_NONE, ROLE_VIEWER, ROLE_OPERATOR, ROLE_ADMIN } role_t;

/* Per request, in the request pool (shared, with a dispose callback that audits). */
typedef struct admin_req {
    admin_t *admin;
    h2o_req_t *req;         /* not to be used from the dispose callback */
    const char *token_name; /* for the log line: "-" before auth; points into token_buf or static */
    char token_buf[68];
    role_t role;
    bool audit; /* an /admin/v1/ call: audited when the request ends */
    int status; /* status sent; 0 = none (client gone) */
    int64_t ts_ms;
    char action[176]; /* "GET /admin/v1/keys/{id}" */
    char target[136]; /* a validated id or name, or "" */
    char ip[48];      /* truncated */
    char request_id[65];
} admin_req_t;

typedef enum {
    WRITE_PROVIDER_PUT,
    WRITE_PROVIDER_DELETE,
    WRITE_KEY_CREATE,
    WRITE_KEY_REVOKE,
    WRITE_KEY_ROTATE,
    WRITE_TOKEN_CREATE,
    WRITE_TOKEN_DELETE,
    WRITE_PRICE_PUT,
    WRITE_PRICE_DELETE,
    READ_PRICES,
    READ_PRICE,
    READ_AUDIT,
    QUERY_NODE,
} write_kind_t;

typedef struct admin_write {
    h2o_linklist_t link;       /* in admin->pending while a request waits for it */
    admin_req_t *areq;         /* NULL once the request is gone or answered */
    struct admin_write **slot; /* in the request pool; NULL once detached */
    admin_t *admin;            /* valid while areq != NULL */
    write_kind_t kind;
    bool via_etcd;                /* an etcd request with data == this is in flight */
    Llmrelay__Provider *provider; /* owned (protobuf-c unpacked) */
    Llmrelay__ApiKey *key;        /* owned (protobuf-c unpacked) */
    Llmrelay__AdminToken *token;  /* owned */
    Llmrelay__Price *price;       /* owned */
    char name[ADMIN_MAX_SEGMENT + 8];
    int limit;
    char secret[96]; /* key create / rotate, token create; wiped */
    int64_t prev_grace_until; /* rotate: until when the previous secret works (unix s) */
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

bool admin_model_valid(const char *s, size_t len)
{
    if (len == 0 || len > ADMIN_MAX_PRICE_MODEL)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-' || c == ':' || c == '@' || c == '+'))
            return false;
    }
    return true;
}

/* Copies src into dst (cap bytes), truncating; always NUL-terminated. */
static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t len = strnlen(src, cap - 1);
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* key_ followed by 1..60 of [A-Za-z0-9] (docs/admin-api.md). */
static bool key_id_valid(const char *s)
{
    size_t len = strlen(s);
    if (len < 5 || len > 64 || memcmp(s, "key_", 4) != 0)
        return false;
    for (size_t i = 4; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
            return false;
    }
    return true;
}

int admin_ip_truncate(const struct sockaddr *sa, char *out, size_t outcap)
{
    char text[INET6_ADDRSTRLEN + 8];
    if (sa != NULL && sa->sa_family == AF_INET6) {
        struct in6_addr a6 = ((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(&a6)) {
            struct in_addr a4;
            memcpy(&a4, &a6.s6_addr[12], 4);
            ((uint8_t *)&a4)[3] = 0;
            inet_ntop(AF_INET, &a4, text, sizeof(text));
            strcat(text, "/24");
        } else {
            memset(&a6.s6_addr[6], 0, 10);
            inet_ntop(AF_INET6, &a6, text, sizeof(text));
            strcat(text, "/48");
        }
    } else if (sa != NULL && sa->sa_family == AF_INET) {
        struct in_addr a4 = ((const struct sockaddr_in *)sa)->sin_addr;
        ((uint8_t *)&a4)[3] = 0;
        inet_ntop(AF_INET, &a4, text, sizeof(text));
        strcat(text, "/24");
    } else {
        strcpy(text, "-");
    }
    size_t len = strlen(text);
    if (len + 1 > outcap)
        return -ENOBUFS;
    memcpy(out, text, len + 1);
    return 0;
}

int admin_parse_duration(const char *s, int64_t *out_ms)
{
    if (s == NULL || s[0] < '0' || s[0] > '9')
        return -EINVAL;
    int64_t n = 0;
    size_t i = 0;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        if (i >= 12)
            return -EINVAL;
        n = n * 10 + (s[i] - '0');
    }
    const char *unit = s + i;
    int64_t mul;
    if (strcmp(unit, "ms") == 0)
        mul = 1;
    else if (strcmp(unit, "s") == 0)
        mul = 1000;
    else if (strcmp(unit, "m") == 0)
        mul = 60 * 1000;
    else if (strcmp(unit, "h") == 0)
        mul = 3600 * 1000;
    else if (strcmp(unit, "d") == 0)
        mul = 24 * 3600 * 1000;
    else
        return -EINVAL;
    const int64_t max = 3660LL * 24 * 3600 * 1000; /* ~10 years */
    if (n > max / mul)
        return -EINVAL;
    *out_ms = n * mul;
    return 0;
}

int admin_parse_time_arg(const char *s, int64_t now_ms, int64_t *out_ms)
{
    int64_t d, t;
    if (admin_parse_duration(s, &d) == 0) {
        *out_ms = now_ms - d;
        return 0;
    }
    if (s != NULL && util_parse_rfc3339(s, &t) == 0 && t > -62135596800LL && t < 253402300800LL) {
        *out_ms = t * 1000;
        return 0;
    }
    return -EINVAL;
}

static int64_t admin_now_ms(const admin_t *a)
{
    if (a->ops.now_ms != NULL)
        return a->ops.now_ms(a->ops.data);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t admin_now_s(const admin_t *a)
{
    int64_t ms = admin_now_ms(a);
    return ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
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

typedef struct jw {
    yajl_gen g;
    bool failed;
} jw_t;

static int jw_init(jw_t *w)
{
    w->failed = false;
    yajl_alloc_funcs af; /* yajl copies it: its buffers are wiped as they are freed */
    wipe_yajl_alloc_funcs_init(&af);
    w->g = yajl_gen_alloc(&af);
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
    case 202:
        return "Accepted";
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
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 501:
        return "Not Implemented";
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
static void send_body_typed(admin_req_t *r, int status, const char *body, size_t len, const char *allow,
                            const char *content_type);

static void send_body(admin_req_t *r, int status, const char *body, size_t len, const char *allow)
{
    send_body_typed(r, status, body, len, allow, "application/json");
}

static void send_body_typed(admin_req_t *r, int status, const char *body, size_t len, const char *allow,
                            const char *content_type)
{
    h2o_req_t *req = r->req;
    r->status = status;
    wiped_buf_t *b = h2o_mem_alloc_shared(&req->pool, sizeof(*b) + len + 1, wiped_buf_dispose);
    b->len = len;
    memcpy(b->bytes, body, len);
    b->bytes[len] = '\0';

    req->res.status = status;
    req->res.reason = reason_of(status);
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type, strlen(content_type));
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
    case 409:
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
/* Starts a JSON answer; false (with a 500 sent) when there is no memory for it. */
static bool jw_start(admin_req_t *r, jw_t *w)
{
    if (jw_init(w) == 0)
        return true;
    send_error(r, 500, "internal_error", "out of memory");
    return false;
}

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

/* The channels' breakers as the workers last published them (ops.channels), for the
 * provider answers. rows NULL = none known (every channel reads closed). */
typedef struct channel_view {
    channels_row_t *rows; /* ordered by (provider, key_index) */
    size_t n;
    uint64_t now_mono_ms; /* the clock of the rows' last_change_ms */
    int64_t now_ms;       /* the admin's clock (unix ms) at the same moment */
} channel_view_t;

#define ADMIN_CHANNELS_DEFAULT_CAP 4096 /* rows asked for when the node gives no bound */

static int64_t admin_now_ms(const admin_t *a);
static void jw_time_ms(jw_t *w, int64_t ms);

static void channel_view_load(admin_t *a, channel_view_t *v)
{
    memset(v, 0, sizeof(*v));
    v->now_ms = admin_now_ms(a);
    if (a->ops.channels == NULL)
        return;
    size_t cap = a->ops.channels_bound != NULL ? a->ops.channels_bound(a->ops.data) : ADMIN_CHANNELS_DEFAULT_CAP;
    if (cap == 0 || (v->rows = calloc(cap, sizeof(*v->rows))) == NULL)
        return;
    v->n = a->ops.channels(a->ops.data, v->rows, cap, &v->now_mono_ms);
}

static void channel_view_free(channel_view_t *v)
{
    free(v->rows);
    v->rows = NULL;
    v->n = 0;
}

/* The row of (provider, key_index), or NULL when the workers have none (yet). */
static const channels_row_t *channel_view_find(const channel_view_t *v, const char *provider, uint32_t key_index)
{
    size_t lo = 0, hi = v->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const channels_row_t *r = &v->rows[mid];
        int c = strcmp(r->provider, provider);
        if (c == 0)
            c = r->key_index < key_index ? -1 : r->key_index > key_index;
        if (c == 0)
            return r;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* channels_state_name's words (kept here: the admin module links without the relay's). */
static const char *channel_state_name(channels_state_t s)
{
    return s == CHANNELS_OPEN ? "open" : s == CHANNELS_HALF_OPEN ? "half_open" : "closed";
}

/* "channels": one row per upstream key of p, in key order; a key the workers have no
 * breaker for (never used, or a config newer than theirs) reads closed with zeros. */
static void gen_provider_channels(jw_t *w, const Llmrelay__Provider *p, const channel_view_t *v)
{
    jw_key(w, "channels");
    jw_array_open(w);
    for (size_t i = 0; i < p->n_api_keys; i++) {
        const channels_row_t *row = channel_view_find(v, p->name, (uint32_t)i);
        char masked[16];
        jw_map_open(w);
        jw_key(w, "key_index");
        jw_int(w, (int64_t)i);
        jw_key(w, "key");
        if (admin_mask_secret(p->api_keys[i], masked, sizeof(masked)) == 0)
            jw_str(w, masked);
        else
            jw_null(w);
        jw_key(w, "state");
        jw_str(w, channel_state_name(row ? row->state : CHANNELS_CLOSED));
        jw_key(w, "failures");
        jw_int(w, row ? (int64_t)row->failures : 0);
        jw_key(w, "opens");
        jw_int(w, row ? (int64_t)row->opens : 0);
        jw_key(w, "probes");
        jw_int(w, row ? (int64_t)row->probes : 0);
        jw_key(w, "workers_not_closed");
        jw_int(w, row ? (int64_t)row->not_closed : 0);
        jw_key(w, "last_change");
        /* The workers' clock is monotonic: placed on the admin's clock by its age. */
        if (row != NULL && row->last_change_ms != 0 && row->last_change_ms <= v->now_mono_ms)
            jw_time_ms(w, v->now_ms - (int64_t)(v->now_mono_ms - row->last_change_ms));
        else
            jw_null(w);
        jw_map_close(w);
    }
    jw_array_close(w);
}

/* "channel_states": how many of p's channels are in each state (provider list). */
static void gen_provider_channel_summary(jw_t *w, const Llmrelay__Provider *p, const channel_view_t *v)
{
    int64_t closed = 0, half_open = 0, open = 0;
    for (size_t i = 0; i < p->n_api_keys; i++) {
        const channels_row_t *row = channel_view_find(v, p->name, (uint32_t)i);
        channels_state_t st = row ? row->state : CHANNELS_CLOSED;
        if (st == CHANNELS_OPEN)
            open++;
        else if (st == CHANNELS_HALF_OPEN)
            half_open++;
        else
            closed++;
    }
    jw_key(w, "channel_states");
    jw_map_open(w);
    jw_key(w, "closed");
    jw_int(w, closed);
    jw_key(w, "half_open");
    jw_int(w, half_open);
    jw_key(w, "open");
    jw_int(w, open);
    jw_map_close(w);
}

/* A provider record; with v, its channels' breakers too (detail: one row per key, else a
 * count per state). */
static void gen_provider_ex(jw_t *w, const Llmrelay__Provider *p, const channel_view_t *v, bool detail);

static void gen_provider(jw_t *w, const Llmrelay__Provider *p)
{
    gen_provider_ex(w, p, NULL, false);
}

static void gen_provider_ex(jw_t *w, const Llmrelay__Provider *p, const channel_view_t *v, bool detail)
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
    if (v != NULL && detail)
        gen_provider_channels(w, p, v);
    else if (v != NULL)
        gen_provider_channel_summary(w, p, v);
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

static const Llmrelay__Snapshot *snapshot(admin_t *a);

/* The latest grace_until (unix s) of a superseded secret of key id still accepted at now_s,
 * or 0. */
static int64_t key_prev_grace(admin_t *a, const char *id, int64_t now_s)
{
    const Llmrelay__Snapshot *snap = snapshot(a);
    int64_t best = 0;
    for (size_t i = 0; snap != NULL && i < snap->n_keys; i++) {
        const Llmrelay__ApiKey *k = snap->keys[i];
        if (k->grace_until > now_s && k->grace_until > best && k->id != NULL && strcmp(k->id, id) == 0 &&
            strcmp(k->status, "revoked") != 0)
            best = k->grace_until;
    }
    return best;
}

/* K: the contract's `key show` shape, with live spending from the node. Never the secret or
 * its hash. */
static void gen_key_fields_ex(admin_t *a, jw_t *w, const Llmrelay__ApiKey *k, int64_t prev_grace)
{
    int64_t now = admin_now_s(a);
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

    int64_t requests = 0, input = 0, output = 0;
    double usd = 0;
    if (a->ops.key_spent != NULL && !a->ops.key_spent(a->ops.data, k->id, &requests, &input, &output, &usd))
        requests = input = output = 0, usd = 0;
    if (!isfinite(usd) || usd < 0)
        usd = 0;
    jw_key(w, "spent");
    jw_map_open(w);
    jw_key(w, "requests");
    jw_int(w, requests);
    jw_key(w, "input_tokens");
    jw_int(w, input);
    jw_key(w, "output_tokens");
    jw_int(w, output);
    jw_key(w, "usd");
    jw_double(w, usd);
    jw_map_close(w);
    jw_key(w, "remaining");
    jw_map_open(w);
    jw_key(w, "tokens");
    if (k->has_budget_tokens) {
        int64_t left = k->budget_tokens - input - output;
        jw_int(w, left > 0 ? left : 0);
    } else {
        jw_null(w);
    }
    jw_key(w, "usd");
    if (k->has_budget_usd) {
        double left = k->budget_usd - usd;
        jw_double(w, left > 0 ? left : 0);
    } else {
        jw_null(w);
    }
    jw_map_close(w);
    jw_key(w, "revoked");
    jw_time(w, k->revoked_at);
    /* After a rotation: until when the previous secret is still accepted. */
    jw_key(w, "previous_key_valid_until");
    jw_time(w, prev_grace != 0 ? prev_grace : k->id != NULL ? key_prev_grace(a, k->id, now) : 0);
}

/* prev_grace 0: looked up in the current snapshot. */
static void gen_key_fields(admin_t *a, jw_t *w, const Llmrelay__ApiKey *k)
{
    gen_key_fields_ex(a, w, k, 0);
}

static void gen_key(admin_t *a, jw_t *w, const Llmrelay__ApiKey *k)
{
    jw_map_open(w);
    gen_key_fields(a, w, k);
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
    if (w->token != NULL)
        llmrelay__admin_token__free_unpacked(w->token, NULL);
    if (w->price != NULL)
        llmrelay__price__free_unpacked(w->price, NULL);
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
    w->admin = r->admin;
    w->kind = kind;
    h2o_linklist_insert(&r->admin->pending, &w->link);
    return w;
}

static void gen_price(jw_t *w, const Llmrelay__Price *p)
{
    jw_map_open(w);
    jw_key(w, "model");
    jw_str(w, p->model);
    jw_key(w, "input");
    jw_double(w, p->input_per_mtok);
    jw_key(w, "output");
    jw_double(w, p->output_per_mtok);
    jw_key(w, "cached_input");
    if (p->has_cached_input)
        jw_double(w, p->cached_input_per_mtok);
    else
        jw_null(w);
    jw_key(w, "reasoning");
    if (p->has_reasoning)
        jw_double(w, p->reasoning_per_mtok);
    else
        jw_null(w);
    jw_key(w, "updated_at");
    jw_time(w, p->updated_at);
    jw_map_close(w);
}

static void answer_write(admin_req_t *r, admin_write_t *w, int status)
{
    admin_t *a = r->admin;
    if (status == -ENOENT) {
        const char *what = "no such record";
        if (w->kind == WRITE_PROVIDER_DELETE)
            what = "no such provider";
        else if (w->kind == WRITE_PRICE_DELETE)
            what = "no price for this model";
        else if (w->kind == WRITE_TOKEN_DELETE)
            what = "no such token";
        send_error(r, 404, "not_found", what);
        return;
    }
    if (status == -ENOTCONN) {
        send_error(r, 503, "etcd_unavailable", "this node has no etcd client; nothing was changed");
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
    case WRITE_PRICE_DELETE:
    case WRITE_TOKEN_DELETE:
        jw_map_open(&jw);
        jw_key(&jw, "deleted");
        jw_str(&jw, w->name);
        jw_map_close(&jw);
        break;
    case WRITE_KEY_CREATE:
    case WRITE_KEY_ROTATE:
        http = w->kind == WRITE_KEY_CREATE ? 201 : 200;
        jw_map_open(&jw);
        jw_key(&jw, "key");
        jw_str(&jw, w->secret);
        /* The new record is not in the snapshot yet: the grace comes from the write. */
        gen_key_fields_ex(a, &jw, w->key, w->kind == WRITE_KEY_ROTATE ? w->prev_grace_until : 0);
        jw_map_close(&jw);
        break;
    case WRITE_KEY_REVOKE:
        gen_key(a, &jw, w->key);
        break;
    case WRITE_TOKEN_CREATE:
        http = 201;
        jw_map_open(&jw);
        jw_key(&jw, "name");
        jw_str(&jw, w->token->name);
        jw_key(&jw, "role");
        jw_str(&jw, w->token->role);
        jw_key(&jw, "token");
        jw_str(&jw, w->secret);
        jw_key(&jw, "created");
        jw_time(&jw, w->token->created_at);
        jw_map_close(&jw);
        break;
    case WRITE_PRICE_PUT:
        gen_price(&jw, w->price);
        break;
    default:
        jw_null(&jw);
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

static void on_etcd_txn_done(etcd_client_t *c, int status, bool succeeded, int64_t revision,
                             const etcd_op_result_t *results, size_t n, void *data)
{
    (void)c;
    (void)revision;
    admin_write_t *w = data;
    w->via_etcd = false;
    int deleted = 0;
    for (size_t i = 0; i < n; i++)
        if (results[i].type == ETCD_OP_DELETE)
            deleted += results[i].deleted > 0;
    if (status == 0 && !succeeded)
        status = -EIO;
    if (status == 0 && (w->kind == WRITE_PRICE_DELETE || w->kind == WRITE_TOKEN_DELETE) && deleted == 0)
        status = -ENOENT;
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
    case WRITE_TOKEN_CREATE:
        rc = config_store_put_token(store, w->token, on_store_done, w);
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

/* An etcd key "<prefix><dir><id>" into out (cap bytes). Returns its length or -ENAMETOOLONG. */
static int etcd_key(const admin_t *a, const char *dir, const char *id, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s%s%s", a->prefix, dir, id);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : n;
}

/* A protobuf message packed into a new buffer (free it; wipe first if it may hold secrets). */
static uint8_t *pack_msg(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(*len > 0 ? *len : 1);
    if (buf != NULL)
        protobuf_c_message_pack(m, buf);
    return buf;
}

/* Sends a txn of ops (no compares) for w; on failure answers and frees w. Keys and values
 * are copied by the etcd client during the call. */
static void txn_submit(admin_req_t *r, admin_write_t *w, const etcd_op_t *ops, size_t n)
{
    admin_t *a = r->admin;
    int rc = a->etcd == NULL ? -ENOTCONN : etcd_txn(a->etcd, NULL, 0, ops, n, NULL, 0, on_etcd_txn_done, w);
    if (rc == 0) {
        w->via_etcd = true;
        return;
    }
    admin_req_t *again = write_detach(w);
    if (again != NULL)
        answer_write(again, w, rc == -ENOTCONN ? -ENOTCONN : -EIO);
    write_free(w);
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
    /* The current record of a key: superseded secrets (rotation) carry a grace_until. */
    for (size_t i = 0; i < snap->n_keys; i++)
        if (snap->keys[i]->id != NULL && snap->keys[i]->grace_until == 0 && strcmp(snap->keys[i]->id, id) == 0)
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
    if (a->ops.status != NULL)
        a->ops.status(a->ops.data, &st);
    bool synced = config_store_synced(a->store);
    bool has = config_store_has_snapshot(a->store);
    bool ready = has && !st.draining;
    jw_t w;
    if (!jw_start(r, &w))
        return;
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
    channel_view_t view;
    channel_view_load(r->admin, &view);
    jw_map_open(&w);
    jw_key(&w, "providers");
    jw_array_open(&w);
    for (size_t i = 0; i < n; i++)
        gen_provider_ex(&w, list[i], &view, false);
    free(list);
    channel_view_free(&view);
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
    if (!jw_start(r, &w))
        return;
    channel_view_t view;
    channel_view_load(r->admin, &view);
    gen_provider_ex(&w, p, &view, true);
    channel_view_free(&view);
    send_jw(r, 200, &w);
}

/* Builds the provider record from a PUT body. Returns NULL with msg set on a bad body; the
 * record is a heap copy owned by the caller (its strings no longer point into the tree). */
static Llmrelay__Provider *provider_from_json(yajl_val root, const char *name, int64_t now_s, char *msg, size_t msglen)
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
    p.updated_at = now_s;

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
    Llmrelay__Provider *p = provider_from_json(root, name, admin_now_s(r->admin), msg, sizeof(msg));
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
        if (list[i]->grace_until == 0) /* superseded secrets are not keys of their own */
            gen_key(r->admin, &w, list[i]);
    free(list);
    jw_array_close(&w);
    jw_map_close(&w);
    send_jw(r, 200, &w);
}

static void answer_key(admin_req_t *r, const char *id)
{
    const Llmrelay__ApiKey *k = find_key(r->admin, id);
    if (k == NULL) {
        send_error(r, 404, "not_found", "no such key");
        return;
    }
    jw_t w;
    if (!jw_start(r, &w))
        return;
    gen_key(r->admin, &w, k);
    send_jw(r, 200, &w);
}

/* The node has brought its view of the key's spending up to date (in a cluster: asked the
 * key's owner); status is ignored: the answer is what the node knows now. */
static void on_key_refreshed(void *done_ctx, int status, const char *json, size_t len)
{
    admin_write_t *w = done_ctx;
    (void)status;
    (void)json;
    (void)len;
    admin_req_t *r = write_detach(w);
    if (r != NULL)
        answer_key(r, w->name);
    write_free(w);
}

static void handle_key_get(admin_req_t *r, const char *id)
{
    admin_t *a = r->admin;
    if (find_key(a, id) == NULL || a->ops.refresh_key == NULL) {
        answer_key(r, id);
        return;
    }
    admin_write_t *w = write_new(r, QUERY_NODE);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    snprintf(w->name, sizeof(w->name), "%s", id);
    a->ops.refresh_key(a->ops.data, id, on_key_refreshed, w); /* may answer at once */
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
                k.created_at = admin_now_s(r->admin);
                snprintf(r->target, sizeof(r->target), "%s", id);
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
    admin_t *a = r->admin;
    const Llmrelay__ApiKey *k = find_key(a, id);
    if (k == NULL) {
        send_error(r, 404, "not_found", "no such key");
        return;
    }
    const Llmrelay__Snapshot *snap = snapshot(a);
    int64_t now = admin_now_s(a);
    /* Every record of the key: the current one and superseded secrets still in grace. */
    size_t n_recs = 0;
    for (size_t i = 0; i < snap->n_keys; i++)
        if (snap->keys[i]->id != NULL && strcmp(snap->keys[i]->id, id) == 0 &&
            strcmp(snap->keys[i]->status, "revoked") != 0)
            n_recs++;
    if (n_recs == 0) { /* idempotent: nothing to write */
        jw_t w;
        if (!jw_start(r, &w))
            return;
        gen_key(a, &w, k);
        send_jw(r, 200, &w);
        return;
    }
    Llmrelay__ApiKey revoked = *k;
    revoked.status = "revoked";
    revoked.revoked_at = now;
    Llmrelay__ApiKey *copy = key_copy(&revoked);
    admin_write_t *w = copy != NULL ? write_new(r, WRITE_KEY_REVOKE) : NULL;
    if (w == NULL) {
        if (copy != NULL)
            llmrelay__api_key__free_unpacked(copy, NULL);
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    w->key = copy;
    if (a->etcd == NULL) { /* only the current record, through the store */
        write_submit(r, w);
        return;
    }
    if (n_recs > AUDIT_BATCH)
        n_recs = AUDIT_BATCH;
    etcd_op_t ops[AUDIT_BATCH];
    char keys[AUDIT_BATCH][340];
    uint8_t *vals[AUDIT_BATCH] = {0};
    size_t lens[AUDIT_BATCH] = {0}, n = 0;
    bool ok = true;
    for (size_t i = 0; i < snap->n_keys && n < n_recs; i++) {
        const Llmrelay__ApiKey *rec = snap->keys[i];
        if (rec->id == NULL || strcmp(rec->id, id) != 0 || strcmp(rec->status, "revoked") == 0)
            continue;
        Llmrelay__ApiKey one = *rec;
        one.status = "revoked";
        one.revoked_at = now;
        int kl = etcd_key(a, "config/keys/", rec->hash, keys[n], sizeof(keys[n]));
        vals[n] = pack_msg(&one.base, &lens[n]);
        if (kl < 0 || vals[n] == NULL) {
            ok = false;
            n++;
            break;
        }
        ops[n] = (etcd_op_t){.type = ETCD_OP_PUT,
                             .key = (const uint8_t *)keys[n],
                             .key_len = (size_t)kl,
                             .value = vals[n],
                             .value_len = lens[n]};
        n++;
    }
    if (ok) {
        txn_submit(r, w, ops, n);
    } else {
        write_detach(w);
        write_free(w);
        send_error(r, 500, "internal_error", "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        free(vals[i]);
}

/* POST /admin/v1/keys/ID/rotate {"grace": "24h"}: a new secret for the key (a new record
 * under its hash, same id) and the old record marked grace_until = now + grace, in one txn
 * that also removes superseded records whose grace is over. */
static void handle_key_rotate(admin_req_t *r, const char *id)
{
    admin_t *a = r->admin;
    int64_t grace_ms = ADMIN_DEFAULT_GRACE_MS;
    bool has_body = r->req->entity.base != NULL && r->req->entity.len > 0;
    if (has_body) {
        yajl_val root = parse_body(r);
        if (root == NULL)
            return;
        static const char *const allowed[] = {"grace", NULL};
        char msg[160] = "";
        bool ok = object_keys_ok(root, allowed, msg, sizeof(msg));
        yajl_val v = ok ? field(root, "grace") : NULL;
        if (ok && !is_null(v) &&
            (!YAJL_IS_STRING(v) || admin_parse_duration(v->u.string, &grace_ms) != 0 ||
             grace_ms > ADMIN_MAX_GRACE_MS)) {
            snprintf(msg, sizeof(msg), "\"grace\" must be a duration such as 30m, 24h or 7d (at most 30d)");
            ok = false;
        }
        tree_free(root);
        if (!ok) {
            send_bad_request(r, msg);
            return;
        }
    }
    const Llmrelay__ApiKey *k = find_key(a, id);
    if (k == NULL) {
        send_error(r, 404, "not_found", "no such key");
        return;
    }
    if (strcmp(k->status, "revoked") == 0) {
        send_error(r, 409, "conflict", "the key is revoked; it cannot be rotated");
        return;
    }
    if (a->etcd == NULL) {
        send_error(r, 503, "etcd_unavailable", "this node has no etcd client; nothing was changed");
        return;
    }
    admin_write_t *w = write_new(r, WRITE_KEY_ROTATE);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    int64_t now_ms = admin_now_ms(a), now = admin_now_s(a);
    uint8_t raw[ADMIN_KEY_SECRET_BYTES];
    char hash[65], prefix[ADMIN_KEY_PREFIX_SHOWN + 1];
    size_t pl = strlen(ADMIN_KEY_PREFIX);
    size_t n = 0;
    if (util_random_bytes(raw, sizeof(raw)) == 0) {
        memcpy(w->secret, ADMIN_KEY_PREFIX, pl);
        n = util_base64url(raw, sizeof(raw), w->secret + pl, sizeof(w->secret) - pl);
    }
    explicit_bzero(raw, sizeof(raw));
    if (n == 0) {
        write_detach(w);
        write_free(w);
        send_error(r, 500, "internal_error", "could not create a secret");
        return;
    }
    util_sha256_hex(w->secret, pl + n, hash);
    memcpy(prefix, w->secret, ADMIN_KEY_PREFIX_SHOWN);
    prefix[ADMIN_KEY_PREFIX_SHOWN] = '\0';

    Llmrelay__ApiKey fresh = *k, old = *k;
    fresh.hash = hash;
    fresh.prefix = prefix;
    fresh.grace_until = 0;
    old.grace_until = (now_ms + grace_ms) / 1000;
    if (old.grace_until <= 0)
        old.grace_until = 1;
    w->prev_grace_until = old.grace_until;
    w->key = key_copy(&fresh);

    etcd_op_t ops[AUDIT_BATCH];
    char keys[AUDIT_BATCH][340];
    uint8_t *vals[2] = {NULL, NULL};
    size_t lens[2] = {0, 0}, nops = 0;
    int kl0 = etcd_key(a, "config/keys/", hash, keys[0], sizeof(keys[0]));
    int kl1 = etcd_key(a, "config/keys/", k->hash, keys[1], sizeof(keys[1]));
    vals[0] = pack_msg(&fresh.base, &lens[0]);
    vals[1] = pack_msg(&old.base, &lens[1]);
    bool ok = w->key != NULL && kl0 > 0 && kl1 > 0 && vals[0] != NULL && vals[1] != NULL;
    if (ok) {
        ops[0] = (etcd_op_t){.type = ETCD_OP_PUT,
                             .key = (const uint8_t *)keys[0],
                             .key_len = (size_t)kl0,
                             .value = vals[0],
                             .value_len = lens[0]};
        ops[1] = (etcd_op_t){.type = ETCD_OP_PUT,
                             .key = (const uint8_t *)keys[1],
                             .key_len = (size_t)kl1,
                             .value = vals[1],
                             .value_len = lens[1]};
        nops = 2;
        const Llmrelay__Snapshot *snap = snapshot(a);
        for (size_t i = 0; i < snap->n_keys && nops < AUDIT_BATCH; i++) {
            const Llmrelay__ApiKey *rec = snap->keys[i];
            if (rec->grace_until == 0 || rec->grace_until > now || rec->id == NULL || strcmp(rec->id, id) != 0)
                continue;
            int kl = etcd_key(a, "config/keys/", rec->hash, keys[nops], sizeof(keys[nops]));
            if (kl < 0)
                continue;
            ops[nops] = (etcd_op_t){.type = ETCD_OP_DELETE, .key = (const uint8_t *)keys[nops], .key_len = (size_t)kl};
            nops++;
        }
        txn_submit(r, w, ops, nops);
    } else {
        write_detach(w);
        write_free(w);
        send_error(r, 500, "internal_error", "out of memory");
    }
    explicit_bzero(hash, sizeof(hash));
    free(vals[0]);
    free(vals[1]);
}

/* ---- prices ---- */

/* A price record from a PUT body (model from the path). NULL with msg set on a bad body. */
static Llmrelay__Price *price_from_json(yajl_val root, const char *model, int64_t now_s, char *msg, size_t msglen)
{
    static const char *const allowed[] = {"input", "output", "cached_input", "reasoning", NULL};
    if (!object_keys_ok(root, allowed, msg, msglen))
        return NULL;
    Llmrelay__Price p = LLMRELAY__PRICE__INIT;
    p.model = (char *)model;
    p.updated_at = now_s;
    static const char *const names[] = {"input", "output", "cached_input", "reasoning"};
    double *values[] = {&p.input_per_mtok, &p.output_per_mtok, &p.cached_input_per_mtok, &p.reasoning_per_mtok};
    protobuf_c_boolean *has[] = {NULL, NULL, &p.has_cached_input, &p.has_reasoning};
    for (int i = 0; i < 4; i++) {
        yajl_val v = field(root, names[i]);
        if (is_null(v)) {
            if (has[i] == NULL) {
                snprintf(msg, msglen, "\"%s\" is required: USD per 1M tokens", names[i]);
                return NULL;
            }
            continue;
        }
        if (!YAJL_IS_NUMBER(v) || !isfinite(YAJL_GET_DOUBLE(v)) || YAJL_GET_DOUBLE(v) < 0 ||
            YAJL_GET_DOUBLE(v) > ADMIN_MAX_PRICE) {
            snprintf(msg, msglen, "\"%s\" must be a number of USD per 1M tokens, 0 to %.0f", names[i], ADMIN_MAX_PRICE);
            return NULL;
        }
        *values[i] = YAJL_GET_DOUBLE(v);
        if (has[i] != NULL)
            *has[i] = true;
    }
    size_t len;
    uint8_t *buf = pack_msg(&p.base, &len);
    Llmrelay__Price *copy = buf != NULL ? llmrelay__price__unpack(NULL, len, buf) : NULL;
    free(buf);
    if (copy == NULL)
        snprintf(msg, msglen, "out of memory");
    return copy;
}

static void handle_price_put(admin_req_t *r, const char *model)
{
    admin_t *a = r->admin;
    yajl_val root = parse_body(r);
    if (root == NULL)
        return;
    char msg[160] = "";
    Llmrelay__Price *p = price_from_json(root, model, admin_now_s(a), msg, sizeof(msg));
    tree_free(root);
    if (p == NULL) {
        send_bad_request(r, msg);
        return;
    }
    admin_write_t *w = write_new(r, WRITE_PRICE_PUT);
    if (w == NULL) {
        llmrelay__price__free_unpacked(p, NULL);
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    w->price = p;
    char key[400];
    size_t len = 0;
    int kl = etcd_key(a, "config/prices/", model, key, sizeof(key));
    uint8_t *val = pack_msg(&p->base, &len);
    if (kl < 0 || val == NULL) {
        free(val);
        write_detach(w);
        write_free(w);
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    etcd_op_t op = {
        .type = ETCD_OP_PUT, .key = (const uint8_t *)key, .key_len = (size_t)kl, .value = val, .value_len = len};
    txn_submit(r, w, &op, 1);
    free(val);
}

static void handle_price_delete(admin_req_t *r, const char *model)
{
    admin_t *a = r->admin;
    admin_write_t *w = write_new(r, WRITE_PRICE_DELETE);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    snprintf(w->name, sizeof(w->name), "%s", model);
    char key[400];
    int kl = etcd_key(a, "config/prices/", model, key, sizeof(key));
    etcd_op_t op = {.type = ETCD_OP_DELETE, .key = (const uint8_t *)key, .key_len = kl > 0 ? (size_t)kl : 0};
    txn_submit(r, w, &op, kl > 0 ? 1 : 0);
}

static int cmp_price(const void *x, const void *y)
{
    const Llmrelay__Price *px = *(Llmrelay__Price *const *)x, *py = *(Llmrelay__Price *const *)y;
    return strcmp(px->model, py->model);
}

/* Answers a price list (or one price) from records (sorted here). */
static void answer_prices(admin_req_t *r, Llmrelay__Price **prices, size_t n, bool single, const char *model)
{
    if (single) {
        for (size_t i = 0; i < n; i++) {
            if (prices[i]->model != NULL && strcmp(prices[i]->model, model) == 0) {
                jw_t w;
                if (!jw_start(r, &w))
                    return;
                gen_price(&w, prices[i]);
                send_jw(r, 200, &w);
                return;
            }
        }
        send_error(r, 404, "not_found", "no price for this model");
        return;
    }
    if (n > 1)
        qsort(prices, n, sizeof(*prices), cmp_price);
    jw_t w;
    if (!jw_start(r, &w))
        return;
    jw_map_open(&w);
    jw_key(&w, "prices");
    jw_array_open(&w);
    for (size_t i = 0; i < n; i++)
        gen_price(&w, prices[i]);
    jw_array_close(&w);
    jw_map_close(&w);
    send_jw(r, 200, &w);
}

/* Prices are read from etcd (read-your-writes); while etcd is unreachable, from the
 * snapshot's prices (filled once the config store loads config/prices/). */
static void on_prices_range(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t n, bool more,
                            void *data)
{
    (void)c;
    (void)revision;
    (void)more;
    admin_write_t *w = data;
    w->via_etcd = false;
    admin_req_t *r = write_detach(w);
    if (r != NULL) {
        bool single = w->kind == READ_PRICE;
        if (status < 0) {
            const Llmrelay__Snapshot *snap = snapshot(r->admin);
            size_t np = snap->n_prices;
            Llmrelay__Price **copy = np > 0 ? malloc(np * sizeof(*copy)) : NULL;
            if (np > 0 && copy == NULL) {
                send_error(r, 500, "internal_error", "out of memory");
            } else {
                if (np > 0)
                    memcpy(copy, snap->prices, np * sizeof(*copy));
                answer_prices(r, copy, np, single, w->name);
                free(copy);
            }
        } else {
            Llmrelay__Price **list = calloc(n > 0 ? n : 1, sizeof(*list));
            size_t np = 0;
            for (size_t i = 0; list != NULL && i < n; i++) {
                Llmrelay__Price *p = llmrelay__price__unpack(NULL, kvs[i].value_len, kvs[i].value);
                if (p != NULL && p->model != NULL && p->model[0] != '\0')
                    list[np++] = p;
                else if (p != NULL)
                    llmrelay__price__free_unpacked(p, NULL);
            }
            if (list == NULL)
                send_error(r, 500, "internal_error", "out of memory");
            else
                answer_prices(r, list, np, single, w->name);
            for (size_t i = 0; i < np; i++)
                llmrelay__price__free_unpacked(list[i], NULL);
            free(list);
        }
    }
    write_free(w);
}

static void handle_price_read(admin_req_t *r, const char *model)
{
    admin_t *a = r->admin;
    admin_write_t *w = write_new(r, model != NULL ? READ_PRICE : READ_PRICES);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    if (model != NULL)
        snprintf(w->name, sizeof(w->name), "%s", model);
    char key[400];
    int kl = model != NULL ? etcd_key(a, "config/prices/", model, key, sizeof(key))
                           : etcd_key(a, "config/prices/", "", key, sizeof(key));
    int rc = -ENOTCONN;
    if (a->etcd != NULL && kl > 0) {
        if (model != NULL)
            rc = etcd_range(a->etcd, (const uint8_t *)key, (size_t)kl, NULL, 0, 0, 0, on_prices_range, w);
        else
            rc = etcd_range_prefix(a->etcd, (const uint8_t *)key, (size_t)kl, ADMIN_MAX_PRICES, 0, on_prices_range, w);
    }
    if (rc == 0) {
        w->via_etcd = true;
        return;
    }
    on_prices_range(NULL, -EIO, 0, NULL, 0, false, w); /* from the snapshot */
}

/* ---- admin tokens ---- */

static int cmp_token(const void *x, const void *y)
{
    const Llmrelay__AdminToken *tx = *(Llmrelay__AdminToken *const *)x, *ty = *(Llmrelay__AdminToken *const *)y;
    int c = strcmp(tx->name, ty->name);
    return c != 0 ? c : (tx->created_at < ty->created_at ? -1 : tx->created_at > ty->created_at);
}

static void handle_token_list(admin_req_t *r)
{
    const Llmrelay__Snapshot *snap = snapshot(r->admin);
    size_t n = snap->n_tokens;
    Llmrelay__AdminToken **list =
        n > 0 ? (Llmrelay__AdminToken **)sorted((void *const *)snap->tokens, n, cmp_token) : NULL;
    jw_t w;
    if ((n > 0 && list == NULL) || jw_init(&w) != 0) {
        free(list);
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    jw_map_open(&w);
    jw_key(&w, "tokens");
    jw_array_open(&w);
    for (size_t i = 0; i < n; i++) { /* never the hash */
        jw_map_open(&w);
        jw_key(&w, "name");
        jw_str(&w, list[i]->name);
        jw_key(&w, "role");
        jw_str(&w, list[i]->role);
        jw_key(&w, "created");
        jw_time(&w, list[i]->created_at);
        jw_map_close(&w);
    }
    free(list);
    jw_array_close(&w);
    jw_map_close(&w);
    send_jw(r, 200, &w);
}

static bool token_name_taken(admin_t *a, const char *name)
{
    const Llmrelay__Snapshot *snap = snapshot(a);
    for (size_t i = 0; i < snap->n_tokens; i++)
        if (snap->tokens[i]->name != NULL && strcmp(snap->tokens[i]->name, name) == 0)
            return true;
    return strcmp(name, "bootstrap") == 0;
}

static void handle_token_create(admin_req_t *r)
{
    admin_t *a = r->admin;
    yajl_val root = parse_body(r);
    if (root == NULL)
        return;
    static const char *const allowed[] = {"name", "role", NULL};
    char msg[160] = "", name[ADMIN_MAX_NAME + 1] = "", role[16] = "";
    bool ok = object_keys_ok(root, allowed, msg, sizeof(msg));
    yajl_val v = ok ? field(root, "name") : NULL;
    if (ok && (v == NULL || !YAJL_IS_STRING(v) || !admin_name_valid(v->u.string, strlen(v->u.string)))) {
        snprintf(msg, sizeof(msg), "\"name\" must be 1..%d characters of [A-Za-z0-9._-]", ADMIN_MAX_NAME);
        ok = false;
    }
    if (ok)
        snprintf(name, sizeof(name), "%s", v->u.string);
    v = ok ? field(root, "role") : NULL;
    if (ok && (v == NULL || !YAJL_IS_STRING(v) ||
               (strcmp(v->u.string, "admin") != 0 && strcmp(v->u.string, "operator") != 0 &&
                strcmp(v->u.string, "viewer") != 0))) {
        snprintf(msg, sizeof(msg), "\"role\" must be one of admin, operator, viewer");
        ok = false;
    }
    if (ok)
        snprintf(role, sizeof(role), "%s", v->u.string);
    tree_free(root);
    if (!ok) {
        send_bad_request(r, msg);
        return;
    }
    snprintf(r->target, sizeof(r->target), "%s", name);
    if (token_name_taken(a, name)) {
        send_error(r, 409, "conflict", "a token with this name exists (delete it first)");
        return;
    }
    admin_write_t *w = write_new(r, WRITE_TOKEN_CREATE);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    uint8_t raw[ADMIN_KEY_SECRET_BYTES];
    char hash[65];
    size_t pl = strlen(ADMIN_TOKEN_PREFIX), n = 0;
    if (util_random_bytes(raw, sizeof(raw)) == 0) {
        memcpy(w->secret, ADMIN_TOKEN_PREFIX, pl);
        n = util_base64url(raw, sizeof(raw), w->secret + pl, sizeof(w->secret) - pl);
    }
    explicit_bzero(raw, sizeof(raw));
    Llmrelay__AdminToken t = LLMRELAY__ADMIN_TOKEN__INIT;
    if (n > 0) {
        util_sha256_hex(w->secret, pl + n, hash);
        t.name = name;
        t.role = role;
        t.hash = hash;
        t.created_at = admin_now_s(a);
        size_t len;
        uint8_t *buf = pack_msg(&t.base, &len);
        w->token = buf != NULL ? llmrelay__admin_token__unpack(NULL, len, buf) : NULL;
        free(buf);
        explicit_bzero(hash, sizeof(hash));
    }
    if (w->token == NULL) {
        write_detach(w);
        write_free(w);
        send_error(r, 500, "internal_error", "could not create the token");
        return;
    }
    write_submit(r, w);
}

static void handle_token_delete(admin_req_t *r, const char *name)
{
    admin_t *a = r->admin;
    const Llmrelay__Snapshot *snap = snapshot(a);
    etcd_op_t ops[AUDIT_BATCH];
    char keys[AUDIT_BATCH][340];
    size_t n = 0;
    for (size_t i = 0; i < snap->n_tokens && n < AUDIT_BATCH; i++) {
        const Llmrelay__AdminToken *t = snap->tokens[i];
        if (t->name == NULL || strcmp(t->name, name) != 0 || t->hash == NULL)
            continue;
        int kl = etcd_key(a, "config/tokens/", t->hash, keys[n], sizeof(keys[n]));
        if (kl < 0)
            continue;
        ops[n] = (etcd_op_t){.type = ETCD_OP_DELETE, .key = (const uint8_t *)keys[n], .key_len = (size_t)kl};
        n++;
    }
    if (n == 0) {
        send_error(r, 404, "not_found", "no such token");
        return;
    }
    admin_write_t *w = write_new(r, WRITE_TOKEN_DELETE);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    snprintf(w->name, sizeof(w->name), "%s", name);
    txn_submit(r, w, ops, n);
    for (size_t i = 0; i < n; i++)
        explicit_bzero(keys[i], sizeof(keys[i]));
}

/* ---- query strings ---- */

typedef struct qparam {
    const char *name;
    bool present;
    char value[ADMIN_MAX_QUERY_VALUE + 1];
} qparam_t;

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parses the query string into params (unknown names ignored). false with msg on a
 * repeated parameter, a value too long, bad percent-encoding or a control character. */
static bool parse_query(h2o_req_t *req, qparam_t *params, size_t np, char *msg, size_t msglen)
{
    if (req->query_at == SIZE_MAX || req->query_at >= req->path.len)
        return true;
    const char *q = req->path.base + req->query_at + 1;
    size_t len = req->path.len - req->query_at - 1;
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && q[i] != '&')
            i++;
        const char *item = q + start;
        size_t ilen = i - start;
        if (i < len)
            i++;
        if (ilen == 0)
            continue;
        const char *eq = memchr(item, '=', ilen);
        size_t nlen = eq != NULL ? (size_t)(eq - item) : ilen;
        qparam_t *p = NULL;
        for (size_t k = 0; k < np; k++)
            if (strlen(params[k].name) == nlen && memcmp(params[k].name, item, nlen) == 0)
                p = &params[k];
        if (p == NULL)
            continue;
        if (p->present) {
            snprintf(msg, msglen, "query parameter \"%s\" appears more than once", p->name);
            return false;
        }
        p->present = true;
        const char *v = eq != NULL ? eq + 1 : item + ilen;
        size_t vlen = item + ilen - v, o = 0;
        for (size_t k = 0; k < vlen; k++) {
            char c = v[k];
            if (c == '%') {
                int hi = k + 2 < vlen ? hexval(v[k + 1]) : -1, lo = k + 2 < vlen ? hexval(v[k + 2]) : -1;
                if (hi < 0 || lo < 0) {
                    snprintf(msg, msglen, "query parameter \"%s\" is badly percent-encoded", p->name);
                    return false;
                }
                c = (char)(hi * 16 + lo);
                k += 2;
            } else if (c == '+') {
                c = ' ';
            }
            if ((unsigned char)c < 0x20 || c == 0x7f || o >= ADMIN_MAX_QUERY_VALUE) {
                snprintf(msg, msglen, "query parameter \"%s\" is too long or holds control characters", p->name);
                return false;
            }
            p->value[o++] = c;
        }
        p->value[o] = '\0';
    }
    return true;
}

/* since/until: defaults now - ADMIN_DEFAULT_SINCE_MS and now. */
static bool parse_range(admin_t *a, const qparam_t *since, const qparam_t *until, int64_t *from, int64_t *to, char *msg,
                        size_t msglen)
{
    int64_t now = admin_now_ms(a);
    *from = now - ADMIN_DEFAULT_SINCE_MS;
    *to = now;
    if (since->present && admin_parse_time_arg(since->value, now, from) != 0) {
        snprintf(msg, msglen, "\"since\" must be a duration (30s, 15m, 24h, 7d) or an RFC 3339 time");
        return false;
    }
    if (until->present && admin_parse_time_arg(until->value, now, to) != 0) {
        snprintf(msg, msglen, "\"until\" must be a duration (30s, 15m, 24h, 7d) or an RFC 3339 time");
        return false;
    }
    if (*from >= *to) {
        snprintf(msg, msglen, "\"since\" must come before \"until\"");
        return false;
    }
    return true;
}

static bool cursor_valid(const char *s)
{
    for (; *s != '\0'; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-' || c == ':' || c == '='))
            return false;
    }
    return true;
}

/* ---- logs and usage: asked of the node ---- */

static void on_node_answer(void *done_ctx, int status, const char *json, size_t len)
{
    admin_write_t *w = done_ctx;
    admin_req_t *r = write_detach(w);
    if (r != NULL) {
        bool is_json = json != NULL && len > 0 && len <= ADMIN_MAX_NODE_ANSWER && (json[0] == '{' || json[0] == '[');
        if (status >= 200 && status < 300 && is_json)
            send_body(r, status, json, len, NULL);
        else if (status >= 400 && status < 600 && is_json && json[0] == '{')
            send_body(r, status, json, len, NULL); /* the node's own error body */
        else if (status == 400)
            send_bad_request(r, "the query was refused by the node");
        else if (status == 503 || status < 0)
            send_error(r, 503, "not_available", "the node cannot answer this query now");
        else
            send_error(r, 500, "internal_error", "the node gave no usable answer");
    }
    write_free(w);
}

static void handle_logs(admin_req_t *r)
{
    admin_t *a = r->admin;
    qparam_t params[] = {{.name = "key"},   {.name = "since"}, {.name = "until"}, {.name = "status"},
                         {.name = "model"}, {.name = "limit"}, {.name = "cursor"}};
    enum { P_KEY, P_SINCE, P_UNTIL, P_STATUS, P_MODEL, P_LIMIT, P_CURSOR };
    char msg[160] = "";
    admin_logs_query_t q;
    memset(&q, 0, sizeof(q));
    q.limit = ADMIN_LOGS_DEFAULT_LIMIT;
    bool ok = parse_query(r->req, params, sizeof(params) / sizeof(params[0]), msg, sizeof(msg)) &&
              parse_range(a, &params[P_SINCE], &params[P_UNTIL], &q.since_ms, &q.until_ms, msg, sizeof(msg));
    if (ok && params[P_KEY].present) {
        if (!key_id_valid(params[P_KEY].value)) {
            snprintf(msg, sizeof(msg), "\"key\" must be a key id (key_...)");
            ok = false;
        } else {
            copy_str(q.key_id, sizeof(q.key_id), params[P_KEY].value);
            snprintf(r->target, sizeof(r->target), "%s", q.key_id);
        }
    }
    if (ok && params[P_STATUS].present) {
        const char *st = params[P_STATUS].value;
        if (strlen(st) == 3 && st[0] >= '1' && st[0] <= '5' && (st[1] == 'x' || st[1] == 'X') &&
            (st[2] == 'x' || st[2] == 'X')) {
            q.status_class = st[0] - '0';
        } else if (strlen(st) == 3 && st[0] >= '1' && st[0] <= '5' && st[1] >= '0' && st[1] <= '9' && st[2] >= '0' &&
                   st[2] <= '9') {
            q.status = atoi(st);
        } else {
            snprintf(msg, sizeof(msg), "\"status\" must be a status code (429) or a class (4xx)");
            ok = false;
        }
    }
    if (ok && params[P_MODEL].present) {
        if (!label_valid(params[P_MODEL].value, ADMIN_MAX_MODEL)) {
            snprintf(msg, sizeof(msg), "\"model\" must be a model name");
            ok = false;
        } else {
            snprintf(q.model, sizeof(q.model), "%s", params[P_MODEL].value);
        }
    }
    if (ok && params[P_LIMIT].present) {
        char *end;
        long v = strtol(params[P_LIMIT].value, &end, 10);
        if (params[P_LIMIT].value[0] < '0' || params[P_LIMIT].value[0] > '9' || *end != '\0' || v < 1 ||
            v > ADMIN_LOGS_MAX_LIMIT) {
            snprintf(msg, sizeof(msg), "\"limit\" must be an integer from 1 to %d", ADMIN_LOGS_MAX_LIMIT);
            ok = false;
        } else {
            q.limit = (int)v;
        }
    }
    if (ok && params[P_CURSOR].present) {
        if (!cursor_valid(params[P_CURSOR].value) || strlen(params[P_CURSOR].value) >= sizeof(q.cursor)) {
            snprintf(msg, sizeof(msg), "\"cursor\" is not one this API gave");
            ok = false;
        } else {
            snprintf(q.cursor, sizeof(q.cursor), "%s", params[P_CURSOR].value);
        }
    }
    if (!ok) {
        send_bad_request(r, msg);
        return;
    }
    if (a->ops.query_logs == NULL) {
        send_error(r, 503, "not_available", "this node does not serve request logs yet");
        return;
    }
    admin_write_t *w = write_new(r, QUERY_NODE);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    a->ops.query_logs(a->ops.data, &q, on_node_answer, w); /* may answer at once */
}

static void handle_usage(admin_req_t *r)
{
    admin_t *a = r->admin;
    qparam_t params[] = {{.name = "key"}, {.name = "since"}, {.name = "until"}, {.name = "by"}};
    enum { P_KEY, P_SINCE, P_UNTIL, P_BY };
    char msg[160] = "";
    admin_usage_query_t q;
    memset(&q, 0, sizeof(q));
    bool ok = parse_query(r->req, params, sizeof(params) / sizeof(params[0]), msg, sizeof(msg)) &&
              parse_range(a, &params[P_SINCE], &params[P_UNTIL], &q.since_ms, &q.until_ms, msg, sizeof(msg));
    if (ok && params[P_KEY].present) {
        if (!key_id_valid(params[P_KEY].value)) {
            snprintf(msg, sizeof(msg), "\"key\" must be a key id (key_...)");
            ok = false;
        } else {
            copy_str(q.key_id, sizeof(q.key_id), params[P_KEY].value);
            snprintf(r->target, sizeof(r->target), "%s", q.key_id);
        }
    }
    if (ok && params[P_BY].present) {
        static const char *const bys[] = {"model", "hour", "node", "key"};
        for (int i = 0; i < 4; i++)
            if (strcmp(params[P_BY].value, bys[i]) == 0)
                q.by = (admin_usage_by_t)(ADMIN_USAGE_BY_MODEL + i);
        if (q.by == ADMIN_USAGE_BY_NONE) {
            snprintf(msg, sizeof(msg), "\"by\" must be one of model, hour, node, key");
            ok = false;
        }
    }
    if (!ok) {
        send_bad_request(r, msg);
        return;
    }
    /* Cluster-wide questions (no key, not by key) are answered from the metric ring. */
    bool ring = q.key_id[0] == '\0' && q.by != ADMIN_USAGE_BY_KEY && a->ops.query_ring_usage != NULL;
    if (!ring && a->ops.query_usage == NULL) {
        send_error(r, 503, "not_available", "this node does not serve usage yet");
        return;
    }
    admin_write_t *w = write_new(r, QUERY_NODE);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    if (ring)
        a->ops.query_ring_usage(a->ops.data, &q, on_node_answer, w);
    else
        a->ops.query_usage(a->ops.data, &q, on_node_answer, w);
}

/* GET /admin/v1/metrics?range=DUR&node=NAME (any role). */
static void handle_metrics(admin_req_t *r)
{
    admin_t *a = r->admin;
    qparam_t params[] = {{.name = "range"}, {.name = "node"}};
    enum { P_RANGE, P_NODE };
    char msg[160] = "";
    admin_metrics_query_t q;
    memset(&q, 0, sizeof(q));
    int64_t range = ADMIN_DEFAULT_SINCE_MS;
    bool ok = parse_query(r->req, params, sizeof(params) / sizeof(params[0]), msg, sizeof(msg));
    if (ok && params[P_RANGE].present && (admin_parse_duration(params[P_RANGE].value, &range) != 0 || range <= 0)) {
        snprintf(msg, sizeof(msg), "\"range\" must be a duration (1h, 24h, 7d)");
        ok = false;
    }
    if (ok && params[P_NODE].present) {
        if (!admin_name_valid(params[P_NODE].value, strlen(params[P_NODE].value))) {
            snprintf(msg, sizeof(msg), "\"node\" must be a node name");
            ok = false;
        } else {
            copy_str(q.node, sizeof(q.node), params[P_NODE].value);
            snprintf(r->target, sizeof(r->target), "%s", q.node);
        }
    }
    if (!ok) {
        send_bad_request(r, msg);
        return;
    }
    q.until_ms = admin_now_ms(a);
    q.since_ms = q.until_ms - range;
    if (a->ops.query_metrics == NULL) {
        send_error(r, 503, "not_available", "this node does not serve the metric ring");
        return;
    }
    admin_write_t *w = write_new(r, QUERY_NODE);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    a->ops.query_metrics(a->ops.data, &q, on_node_answer, w);
}

/* ---- audit log ---- */

static void jw_time_ms(jw_t *w, int64_t ms)
{
    char buf[40];
    int64_t s = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
    if (util_format_rfc3339(s, buf) != 0) {
        jw_null(w);
        return;
    }
    /* "...:SSZ" → "...:SS.mmmZ" */
    size_t len = strlen(buf);
    snprintf(buf + len - 1, sizeof(buf) - len + 1, ".%03dZ", (int)(ms - s * 1000));
    jw_str(w, buf);
}

static void gen_audit(jw_t *w, const Llmrelay__AuditEntry *e)
{
    jw_map_open(w);
    jw_key(w, "ts");
    jw_time_ms(w, e->ts_ms);
    jw_key(w, "ts_ms");
    jw_int(w, e->ts_ms);
    jw_key(w, "node");
    jw_str(w, e->node);
    jw_key(w, "token_name");
    jw_str(w, e->token_name);
    jw_key(w, "role");
    jw_str(w, e->role);
    jw_key(w, "action");
    jw_str(w, e->action);
    jw_key(w, "target");
    if (e->target[0] != '\0')
        jw_str(w, e->target);
    else
        jw_null(w);
    jw_key(w, "status");
    jw_int(w, e->status);
    jw_key(w, "ip");
    jw_str(w, e->ip);
    jw_key(w, "request_id");
    jw_str(w, e->request_id);
    jw_map_close(w);
}

static void on_audit_range(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t n, bool more,
                           void *data)
{
    (void)c;
    (void)revision;
    admin_write_t *w = data;
    w->via_etcd = false;
    admin_req_t *r = write_detach(w);
    if (r != NULL) {
        admin_t *a = r->admin;
        jw_t jw;
        if (status < 0) {
            send_error(r, 503, "etcd_unavailable", "the audit log (etcd) is unavailable");
        } else if (jw_init(&jw) != 0) {
            send_error(r, 500, "internal_error", "out of memory");
        } else {
            size_t dir = a->prefix_len + strlen("audit/");
            jw_map_open(&jw);
            jw_key(&jw, "entries");
            jw_array_open(&jw);
            for (size_t i = 0; i < n; i++) {
                Llmrelay__AuditEntry *e = llmrelay__audit_entry__unpack(NULL, kvs[i].value_len, kvs[i].value);
                if (e == NULL)
                    continue;
                gen_audit(&jw, e);
                llmrelay__audit_entry__free_unpacked(e, NULL);
            }
            jw_array_close(&jw);
            jw_key(&jw, "next_cursor");
            if (more && n > 0 && kvs[n - 1].key_len > dir && kvs[n - 1].key_len - dir < 200) {
                char cur[200];
                memcpy(cur, kvs[n - 1].key + dir, kvs[n - 1].key_len - dir);
                cur[kvs[n - 1].key_len - dir] = '\0';
                if (cursor_valid(cur))
                    jw_str(&jw, cur);
                else
                    jw_null(&jw);
            } else {
                jw_null(&jw);
            }
            jw_map_close(&jw);
            send_jw(r, 200, &jw);
        }
    }
    write_free(w);
}

/* GET /admin/v1/audit?since=&until=&limit=&cursor=: entries oldest first, from etcd. */
static void handle_audit(admin_req_t *r)
{
    admin_t *a = r->admin;
    qparam_t params[] = {{.name = "since"}, {.name = "until"}, {.name = "limit"}, {.name = "cursor"}};
    enum { P_SINCE, P_UNTIL, P_LIMIT, P_CURSOR };
    char msg[160] = "";
    int64_t from, to;
    int limit = ADMIN_AUDIT_DEFAULT_LIMIT;
    bool ok = parse_query(r->req, params, sizeof(params) / sizeof(params[0]), msg, sizeof(msg)) &&
              parse_range(a, &params[P_SINCE], &params[P_UNTIL], &from, &to, msg, sizeof(msg));
    if (ok && params[P_LIMIT].present) {
        char *end;
        long v = strtol(params[P_LIMIT].value, &end, 10);
        if (params[P_LIMIT].value[0] < '0' || params[P_LIMIT].value[0] > '9' || *end != '\0' || v < 1 ||
            v > ADMIN_AUDIT_MAX_LIMIT) {
            snprintf(msg, sizeof(msg), "\"limit\" must be an integer from 1 to %d", ADMIN_AUDIT_MAX_LIMIT);
            ok = false;
        } else {
            limit = (int)v;
        }
    }
    if (ok && params[P_CURSOR].present &&
        (!cursor_valid(params[P_CURSOR].value) || params[P_CURSOR].value[0] == '\0')) {
        snprintf(msg, sizeof(msg), "\"cursor\" is not one this API gave");
        ok = false;
    }
    if (!ok) {
        send_bad_request(r, msg);
        return;
    }
    if (from < 0)
        from = 0;
    if (to < 0)
        to = 0;
    char start[400], end[400];
    int sl, el;
    if (params[P_CURSOR].present) /* right after the last entry shown */
        sl = snprintf(start, sizeof(start), "%saudit/%s", a->prefix, params[P_CURSOR].value) + 1;
    else
        sl = snprintf(start, sizeof(start), "%saudit/%013lld", a->prefix, (long long)from);
    el = snprintf(end, sizeof(end), "%saudit/%013lld", a->prefix, (long long)to);
    if (sl <= 0 || (size_t)sl >= sizeof(start) || el <= 0 || (size_t)el >= sizeof(end)) {
        send_bad_request(r, "\"cursor\" is too long");
        return;
    }
    if (a->etcd == NULL) {
        send_error(r, 503, "etcd_unavailable", "this node has no etcd client");
        return;
    }
    admin_write_t *w = write_new(r, READ_AUDIT);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    /* With a cursor, start is "<...cursor>\0": the key right after the cursor's. */
    int rc = etcd_range(a->etcd, (const uint8_t *)start, (size_t)sl, (const uint8_t *)end, (size_t)el, limit, 0,
                        on_audit_range, w);
    if (rc == 0) {
        w->via_etcd = true;
        return;
    }
    on_audit_range(NULL, rc, 0, NULL, 0, false, w);
}

/* ---- cluster ---- */

/* GET /admin/v1/cluster (any role): the members this node knows (itself included) from the
 * node, keys_owned counted over the relay keys of the current snapshot (superseded secrets
 * of a rotated key are the same key and not counted again). */
static void handle_cluster(admin_req_t *r)
{
    admin_t *a = r->admin;
    if (a->ops.cluster == NULL) {
        send_error(r, 503, "not_available", "this node does not report cluster membership");
        return;
    }
    const Llmrelay__Snapshot *snap = snapshot(a);
    size_t n_keys = 0, cap = snap != NULL ? snap->n_keys : 0;
    const char **ids = calloc(cap + 1, sizeof(*ids));
    if (ids == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    for (size_t i = 0; i < cap; i++)
        if (snap->keys[i]->grace_until == 0 && snap->keys[i]->id != NULL && snap->keys[i]->id[0] != '\0')
            ids[n_keys++] = snap->keys[i]->id;
    admin_cluster_t c;
    memset(&c, 0, sizeof(c));
    qparam_t params[] = {{.name = "key"}};
    char msg[160] = "";
    if (!parse_query(r->req, params, 1, msg, sizeof(msg)) ||
        (params[0].present && !key_id_valid(params[0].value))) {
        free(ids);
        send_error(r, 400, "invalid_request", msg[0] != '\0' ? msg : "\"key\" must be a key id (key_...)");
        return;
    }
    if (params[0].present)
        c.query_key = params[0].value;
    int rc = a->ops.cluster(a->ops.data, ids, n_keys, &c);
    free(ids);
    jw_t w;
    if (rc != 0) {
        free(c.members);
        send_error(r, 500, "internal_error", "cannot read the cluster membership");
        return;
    }
    if (!jw_start(r, &w)) {
        free(c.members);
        return;
    }
    jw_map_open(&w);
    jw_key(&w, "members");
    jw_array_open(&w);
    for (size_t i = 0; i < c.n_members; i++) {
        const admin_cluster_member_t *m = &c.members[i];
        jw_map_open(&w);
        jw_key(&w, "name");
        jw_str(&w, m->name);
        jw_key(&w, "region");
        jw_str(&w, m->region);
        jw_key(&w, "version");
        jw_str(&w, m->version);
        jw_key(&w, "status");
        jw_str(&w, m->status != NULL ? m->status : "alive");
        jw_key(&w, "gossip");
        if (m->gossip[0] != '\0')
            jw_str(&w, m->gossip);
        else
            jw_null(&w);
        jw_key(&w, "keys_owned");
        if (m->keys_owned >= 0)
            jw_int(&w, m->keys_owned);
        else
            jw_null(&w);
        jw_key(&w, "load");
        jw_null(&w);
        jw_map_close(&w);
    }
    jw_array_close(&w);
    if (c.has_packets) {
        static const char *const names[] = {"sealed", "opened", "malformed", "forged", "replayed", "too_old"};
        const uint64_t values[] = {c.sealed, c.opened, c.malformed, c.forged, c.replayed, c.too_old};
        jw_key(&w, "gossip_packets");
        jw_map_open(&w);
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            jw_key(&w, names[i]);
            jw_int(&w, values[i] > INT64_MAX ? INT64_MAX : (int64_t)values[i]);
        }
        jw_map_close(&w);
    }
    if (c.query_key != NULL) {
        jw_key(&w, "key");
        jw_map_open(&w);
        jw_key(&w, "id");
        jw_str(&w, c.query_key);
        jw_key(&w, "owner");
        if (c.key_owner[0] != '\0')
            jw_str(&w, c.key_owner);
        else
            jw_null(&w);
        jw_key(&w, "backup");
        if (c.key_backup[0] != '\0')
            jw_str(&w, c.key_backup);
        else
            jw_null(&w);
        jw_map_close(&w);
    }
    if (c.n_quota > 0) {
        jw_key(&w, "quota");
        jw_map_open(&w);
        for (size_t i = 0; i < c.n_quota && i < sizeof(c.quota_names) / sizeof(c.quota_names[0]); i++) {
            jw_key(&w, c.quota_names[i]);
            jw_int(&w, c.quota_values[i] > INT64_MAX ? INT64_MAX : (int64_t)c.quota_values[i]);
        }
        jw_map_close(&w);
    }
    jw_map_close(&w);
    free(c.members);
    send_jw(r, 200, &w);
}

/* ---- drain ---- */

/* POST /admin/v1/drain (admin, operator) with an optional body {"node": NAME}: asked of the
 * node (ops.drain), which answers 202 and then drains like on SIGTERM when NAME is itself
 * (or absent), and answers for another member itself. */
static void handle_drain(admin_req_t *r)
{
    admin_t *a = r->admin;
    char name[ADMIN_MAX_NAME + 1] = "";
    h2o_req_t *req = r->req;
    if (req->entity.base != NULL && req->entity.len > 0) {
        yajl_val root = parse_body(r);
        if (root == NULL)
            return; /* answered */
        static const char *const known[] = {"node", NULL};
        char msg[160] = "";
        yajl_val v = field(root, "node");
        bool ok = object_keys_ok(root, known, msg, sizeof(msg));
        if (ok && !is_null(v)) {
            if (!YAJL_IS_STRING(v) || !admin_name_valid(v->u.string, strlen(v->u.string))) {
                snprintf(msg, sizeof(msg), "\"node\" must be a node name (1..64 characters of [A-Za-z0-9._-])");
                ok = false;
            } else {
                copy_str(name, sizeof(name), v->u.string);
            }
        }
        tree_free(root);
        if (!ok) {
            send_bad_request(r, msg);
            return;
        }
    }
    snprintf(r->target, sizeof(r->target), "%s", name[0] != '\0' ? name : a->node);
    if (a->ops.drain == NULL) {
        send_error(r, 503, "not_available", "this node cannot be drained through the admin API");
        return;
    }
    admin_write_t *w = write_new(r, QUERY_NODE);
    if (w == NULL) {
        send_error(r, 500, "internal_error", "out of memory");
        return;
    }
    a->ops.drain(a->ops.data, name[0] != '\0' ? name : NULL, on_node_answer, w); /* may answer at once */
}

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
            sanitize_for_log(at->name, strlen(at->name), r->token_buf, sizeof(r->token_buf));
            r->token_name = r->token_buf;
        }
        explicit_bzero(hash, sizeof(hash));
    }
    /* HTTP/1: the header value lives in the connection's input buffer; wipe it. (On h2 it
     * may be shared with the HPACK table, which must stay intact.) */
    if (req->version < 0x200)
        explicit_bzero(value->base, value->len);
    return role;
}

/* ---- audit ---- */

static const char *role_name(role_t role)
{
    switch (role) {
    case ROLE_ADMIN:
        return "admin";
    case ROLE_OPERATOR:
        return "operator";
    case ROLE_VIEWER:
        return "viewer";
    default:
        return "-";
    }
}

static void audit_flush_cb(uv_timer_t *t);

static void audit_schedule(admin_t *a, uint64_t delay_ms)
{
    if (a->stopping || a->audit_inflight > 0 || a->audit_count == 0 || uv_is_active((uv_handle_t *)&a->audit_timer))
        return;
    uv_timer_start(&a->audit_timer, audit_flush_cb, delay_ms, 0);
}

static void audit_pop(admin_t *a, size_t n)
{
    for (size_t i = 0; i < n && a->audit_count > 0; i++) {
        free(a->audit_ring[a->audit_head]);
        a->audit_ring[a->audit_head] = NULL;
        a->audit_head = (a->audit_head + 1) % ADMIN_AUDIT_MAX_BUFFERED;
        a->audit_count--;
    }
}

static void on_audit_txn(etcd_client_t *c, int status, bool succeeded, int64_t revision,
                         const etcd_op_result_t *results, size_t n, void *data)
{
    (void)c;
    (void)revision;
    (void)results;
    (void)n;
    admin_t *a = data;
    size_t sent = a->audit_inflight;
    a->audit_inflight = 0;
    if (status == 0 && succeeded) {
        audit_pop(a, sent);
        if (a->audit_failures > 0)
            log_info("audit log: etcd takes entries again (%zu still queued)", a->audit_count);
        a->audit_failures = 0;
        audit_schedule(a, 0);
        return;
    }
    if (a->audit_failures == 0)
        log_warn("audit log: etcd unavailable (%d); %zu entries queued, retrying", status, a->audit_count);
    unsigned shift = a->audit_failures < 6 ? a->audit_failures : 6;
    uint64_t delay = (uint64_t)AUDIT_RETRY_MIN_MS << shift;
    a->audit_failures++;
    audit_schedule(a, delay > AUDIT_RETRY_MAX_MS ? AUDIT_RETRY_MAX_MS : delay);
}

static void audit_flush_cb(uv_timer_t *t)
{
    admin_t *a = t->data;
    if (a->stopping || a->audit_inflight > 0 || a->audit_count == 0 || a->etcd == NULL)
        return;
    etcd_op_t ops[AUDIT_BATCH];
    size_t n = a->audit_count < AUDIT_BATCH ? a->audit_count : AUDIT_BATCH;
    for (size_t i = 0; i < n; i++) {
        audit_item_t *it = a->audit_ring[(a->audit_head + i) % ADMIN_AUDIT_MAX_BUFFERED];
        ops[i] = (etcd_op_t){.type = ETCD_OP_PUT,
                             .key = it->bytes,
                             .key_len = it->key_len,
                             .value = it->bytes + it->key_len,
                             .value_len = it->value_len};
    }
    if (etcd_txn(a->etcd, NULL, 0, ops, n, NULL, 0, on_audit_txn, a) == 0) {
        a->audit_inflight = n;
    } else {
        a->audit_failures++;
        audit_schedule(a, AUDIT_RETRY_MAX_MS);
    }
}

/* Queues the audit entry of a finished request (from its pool's dispose callback). */
static void audit_push(admin_t *a, const admin_req_t *r)
{
    if (a->etcd == NULL || a->audit_ring == NULL || a->audit_count == ADMIN_AUDIT_MAX_BUFFERED) {
        a->audit_dropped++;
        if ((a->audit_dropped & (a->audit_dropped - 1)) == 0) /* 1, 2, 4, 8...: bounded logging */
            log_warn("audit log: %llu entries dropped so far (%s)", (unsigned long long)a->audit_dropped,
                     a->etcd == NULL ? "no etcd client" : "buffer full");
        return;
    }
    Llmrelay__AuditEntry e = LLMRELAY__AUDIT_ENTRY__INIT;
    e.ts_ms = r->ts_ms > 0 ? r->ts_ms : 0;
    e.node = a->node;
    e.token_name = (char *)r->token_name;
    e.role = (char *)role_name(r->role);
    e.action = (char *)r->action;
    e.target = (char *)r->target;
    e.status = r->status != 0 ? r->status : 499; /* 499: the client left before the answer */
    e.ip = (char *)r->ip;
    e.request_id = (char *)r->request_id;
    char key[400];
    int kl = snprintf(key, sizeof(key), "%saudit/%013lld-%s-%llu", a->prefix, (long long)e.ts_ms, a->node,
                      (unsigned long long)++a->audit_seq);
    size_t vl = llmrelay__audit_entry__get_packed_size(&e);
    audit_item_t *it = kl > 0 && (size_t)kl < sizeof(key) ? malloc(sizeof(*it) + (size_t)kl + vl) : NULL;
    if (it == NULL) {
        a->audit_dropped++;
        return;
    }
    it->key_len = (size_t)kl;
    it->value_len = vl;
    memcpy(it->bytes, key, (size_t)kl);
    llmrelay__audit_entry__pack(&e, it->bytes + kl);
    a->audit_ring[(a->audit_head + a->audit_count) % ADMIN_AUDIT_MAX_BUFFERED] = it;
    a->audit_count++;
    audit_schedule(a, 0);
}

static void on_sweep_done(etcd_client_t *c, int status, int64_t revision, int64_t deleted, void *data)
{
    (void)c;
    (void)revision;
    admin_t *a = data;
    a->sweeping = false;
    if (status < 0)
        log_warn("audit sweep: etcd unavailable (%d); will retry on the next sweep", status);
    else if (deleted > 0)
        log_info("audit sweep: %lld entries older than 7 days deleted", (long long)deleted);
}

int admin_audit_sweep(admin_t *a, int64_t now_ms)
{
    if (a == NULL || a->stopping)
        return -ECANCELED;
    if (a->etcd == NULL)
        return -ENOTCONN;
    if (a->sweeping)
        return -EAGAIN;
    int64_t cutoff = now_ms - ADMIN_AUDIT_RETENTION_MS;
    if (cutoff <= 0)
        return 0;
    /* Keys sort by their 13-digit timestamp: everything in [audit/, audit/<cutoff>) is older. */
    char start[300], end[320];
    int sl = snprintf(start, sizeof(start), "%saudit/", a->prefix);
    int el = snprintf(end, sizeof(end), "%saudit/%013lld", a->prefix, (long long)cutoff);
    int rc =
        etcd_delete(a->etcd, (const uint8_t *)start, (size_t)sl, (const uint8_t *)end, (size_t)el, on_sweep_done, a);
    if (rc == 0)
        a->sweeping = true;
    return rc;
}

uint64_t admin_audit_dropped(const admin_t *a)
{
    return a->audit_dropped;
}

static void admin_req_dispose(void *p)
{
    admin_req_t *r = p;
    if (r->audit)
        audit_push(r->admin, r);
}

/* ---- routing ---- */

static bool method_is(h2o_req_t *req, const char *m)
{
    return h2o_memis(req->method.base, req->method.len, m, strlen(m));
}

/* Splits path into at most 3 segments (each at most ADMIN_MAX_SEGMENT characters). */
static int route_segments(const char *path, size_t len, char segs[3][ADMIN_MAX_SEGMENT + 2], size_t *nsegs)
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
        if (*nsegs == 3 || n > ADMIN_MAX_SEGMENT + 1)
            return -1;
        memcpy(segs[*nsegs], path + start, n);
        segs[*nsegs][n] = '\0';
        (*nsegs)++;
        if (i < len)
            i++; /* skip '/' */
    }
    return 0;
}

/* The audit action ("METHOD /admin/v1/keys/{id}/rotate") and target (a validated id or
 * name, never anything else) of a call, from its path alone. */
static void audit_describe(admin_req_t *r, const char *rest, size_t len)
{
    static const struct {
        const char *name, *param;
    } resources[] = {{"providers", "{name}"}, {"keys", "{id}"}, {"prices", "{model}"}, {"tokens", "{name}"},
                     {"logs", NULL},          {"usage", NULL},  {"audit", NULL},       {"cluster", NULL},
                     {"drain", NULL},         {"metrics", NULL}};
    char method[17], segs[3][ADMIN_MAX_SEGMENT + 2];
    size_t n = 0;
    sanitize_for_log(r->req->method.base, r->req->method.len, method, sizeof(method));
    int res = -1;
    if (route_segments(rest, len, segs, &n) == 0 && n > 0)
        for (int i = 0; i < (int)(sizeof(resources) / sizeof(resources[0])); i++)
            if (strcmp(segs[0], resources[i].name) == 0)
                res = i;
    if (res < 0) {
        snprintf(r->action, sizeof(r->action), "%s /admin/v1/(unknown)", method);
        return;
    }
    const char *param = resources[res].param;
    const char *verb = "";
    if (n == 3 && (strcmp(segs[2], "revoke") == 0 || strcmp(segs[2], "rotate") == 0))
        verb = segs[2];
    else if (n == 3)
        verb = "(unknown)";
    snprintf(r->action, sizeof(r->action), "%s /admin/v1/%s%s%s%s%s", method, resources[res].name, n >= 2 ? "/" : "",
             n >= 2 ? (param != NULL ? param : "(unknown)") : "", n == 3 ? "/" : "", verb);
    if (n >= 2 && param != NULL) {
        const char *id = segs[1];
        bool ok = res == 1   ? key_id_valid(id)
                  : res == 2 ? admin_model_valid(id, strlen(id))
                             : admin_name_valid(id, strlen(id));
        snprintf(r->target, sizeof(r->target), "%s", ok ? id : "(invalid)");
    }
}

static void method_not_allowed(admin_req_t *r, const char *allow)
{
    send_error_allow(r, 405, "method_not_allowed", "method not allowed on this path", allow);
}

static void forbidden(admin_req_t *r, const char *message)
{
    send_error(r, 403, "forbidden", message);
}

static void payload_too_large(admin_req_t *r)
{
    send_error(r, 413, "request_too_large", "the request body is larger than 1 MiB");
}

static const char *const viewer_msg = "this token's role (viewer) may only read";
static const char *const operator_msg = "this token's role (operator) may not change prices or admin tokens";

static void route_admin(admin_req_t *r, const char *rest, size_t len)
{
    h2o_req_t *req = r->req;
    char segs[3][ADMIN_MAX_SEGMENT + 2];
    size_t n;
    role_t role = r->role;
    bool get = method_is(req, "GET"), put = method_is(req, "PUT"), del = method_is(req, "DELETE"),
         post = method_is(req, "POST");
    bool writer = role >= ROLE_OPERATOR; /* keys, providers */
    bool admin = role == ROLE_ADMIN;     /* prices, tokens */
    bool too_large = req->entity.base != NULL && req->entity.len > ADMIN_MAX_BODY;

    if (route_segments(rest, len, segs, &n) != 0 || n == 0) {
        send_error(r, 404, "not_found", "no such admin endpoint");
    } else if (strcmp(segs[0], "providers") == 0 && n == 1) {
        if (get)
            handle_provider_list(r);
        else
            method_not_allowed(r, "GET");
    } else if (strcmp(segs[0], "providers") == 0 && n == 2) {
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
            forbidden(r, viewer_msg);
        else if (put && too_large)
            payload_too_large(r);
        else if (put)
            handle_provider_put(r, segs[1]);
        else
            handle_provider_delete(r, segs[1]);
    } else if (strcmp(segs[0], "keys") == 0 && n == 1) {
        if (get)
            handle_key_list(r);
        else if (!post)
            method_not_allowed(r, "GET, POST");
        else if (!writer)
            forbidden(r, viewer_msg);
        else if (too_large)
            payload_too_large(r);
        else
            handle_key_create(r);
    } else if (strcmp(segs[0], "keys") == 0 && n == 2) {
        if (!get)
            method_not_allowed(r, "GET");
        else if (!key_id_valid(segs[1]))
            send_error(r, 404, "not_found", "no such key");
        else
            handle_key_get(r, segs[1]);
    } else if (strcmp(segs[0], "keys") == 0 && n == 3 &&
               (strcmp(segs[2], "revoke") == 0 || strcmp(segs[2], "rotate") == 0)) {
        if (!post)
            method_not_allowed(r, "POST");
        else if (!writer)
            forbidden(r, viewer_msg);
        else if (!key_id_valid(segs[1]))
            send_error(r, 404, "not_found", "no such key");
        else if (too_large)
            payload_too_large(r);
        else if (segs[2][1] == 'e')
            handle_key_revoke(r, segs[1]);
        else
            handle_key_rotate(r, segs[1]);
    } else if (strcmp(segs[0], "prices") == 0 && n == 1) {
        if (get)
            handle_price_read(r, NULL);
        else
            method_not_allowed(r, "GET");
    } else if (strcmp(segs[0], "prices") == 0 && n == 2) {
        if (!get && !put && !del)
            method_not_allowed(r, "GET, PUT, DELETE");
        else if (!admin_model_valid(segs[1], strlen(segs[1])))
            if (put)
                send_bad_request(r, "a model name is 1..128 characters of [A-Za-z0-9._:@+-]");
            else
                send_error(r, 404, "not_found", "no price for this model");
        else if (get)
            handle_price_read(r, segs[1]);
        else if (!admin)
            forbidden(r, role == ROLE_VIEWER ? viewer_msg : operator_msg);
        else if (put && too_large)
            payload_too_large(r);
        else if (put)
            handle_price_put(r, segs[1]);
        else
            handle_price_delete(r, segs[1]);
    } else if (strcmp(segs[0], "tokens") == 0 && n == 1) {
        if (get)
            handle_token_list(r);
        else if (!post)
            method_not_allowed(r, "GET, POST");
        else if (!admin)
            forbidden(r, role == ROLE_VIEWER ? viewer_msg : operator_msg);
        else if (too_large)
            payload_too_large(r);
        else
            handle_token_create(r);
    } else if (strcmp(segs[0], "tokens") == 0 && n == 2) {
        if (!del)
            method_not_allowed(r, "DELETE");
        else if (!admin)
            forbidden(r, role == ROLE_VIEWER ? viewer_msg : operator_msg);
        else if (!admin_name_valid(segs[1], strlen(segs[1])))
            send_error(r, 404, "not_found", "no such token");
        else
            handle_token_delete(r, segs[1]);
    } else if (n == 1 && (strcmp(segs[0], "logs") == 0 || strcmp(segs[0], "usage") == 0)) {
        if (!get)
            method_not_allowed(r, "GET");
        else if (segs[0][0] == 'l')
            handle_logs(r);
        else
            handle_usage(r);
    } else if (n == 1 && strcmp(segs[0], "metrics") == 0) {
        if (!get)
            method_not_allowed(r, "GET");
        else
            handle_metrics(r);
    } else if (n == 1 && strcmp(segs[0], "audit") == 0) {
        if (!get)
            method_not_allowed(r, "GET");
        else if (role == ROLE_OPERATOR)
            forbidden(r, "this token's role (operator) may not read the audit log");
        else
            handle_audit(r);
    } else if (n == 1 && strcmp(segs[0], "cluster") == 0) {
        if (!get)
            method_not_allowed(r, "GET");
        else
            handle_cluster(r);
    } else if (n == 1 && strcmp(segs[0], "drain") == 0) {
        if (!post)
            method_not_allowed(r, "POST");
        else if (!writer)
            forbidden(r, viewer_msg);
        else if (too_large)
            payload_too_large(r);
        else
            handle_drain(r);
    } else {
        send_error(r, 404, "not_found", "no such admin endpoint");
    }
    if (req->entity.base != NULL && req->entity.len > 0)
        explicit_bzero(req->entity.base, req->entity.len); /* whatever was not parsed */
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    admin_t *a = ((admin_handler_t *)self)->admin;
    admin_req_t *r = h2o_mem_alloc_shared(&req->pool, sizeof(*r), admin_req_dispose);
    memset(r, 0, sizeof(*r));
    r->admin = a;
    r->req = req;
    r->token_name = "-";
    r->role = ROLE_NONE;
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
    if (h2o_memis(path, len, H2O_STRLIT("/metrics")) && a->ops.render_metrics != NULL) {
        if (!method_is(req, "GET")) {
            method_not_allowed(r, "GET");
            return 0;
        }
        wipe_buf_t out;
        wipe_buf_init(&out, 64u << 20);
        if (a->ops.render_metrics(a->ops.data, &out) != 0)
            send_error(r, 500, "internal_error", "cannot render the metrics");
        else
            send_body_typed(r, 200, (const char *)out.data, out.len, NULL, "text/plain; version=0.0.4; charset=utf-8");
        wipe_buf_free(&out);
        return 0;
    }
    static const char prefix[] = "/admin/v1";
    size_t pl = sizeof(prefix) - 1;
    if (len < pl || memcmp(path, prefix, pl) != 0 || (len > pl && path[pl] != '/')) {
        send_error(r, 404, "not_found", "not found");
        return 0;
    }
    size_t skip = len > pl ? pl + 1 : pl;
    /* Every /admin/v1/ call is audited, refused ones included. */
    r->audit = true;
    r->ts_ms = admin_now_ms(a);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (req->conn->callbacks->get_peername == NULL ||
        req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss) == 0)
        ss.ss_family = AF_UNSPEC;
    admin_ip_truncate((struct sockaddr *)&ss, r->ip, sizeof(r->ip));
    audit_describe(r, path + skip, len - skip);

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
    r->role = role;
    route_admin(r, path + skip, len - skip);
    return 0;
}

/* ---- listener and connections ---- */

static void admin_free_cb(uv_handle_t *h)
{
    admin_t *a = h->data;
    if (a->audit_ring != NULL) {
        if (a->audit_count > 0)
            log_warn("audit log: %zu entries not written to etcd before the admin listener stopped", a->audit_count);
        audit_pop(a, a->audit_count);
        free(a->audit_ring);
    }
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
    if (a->stopping && a->listener_closed && a->audit_timer_closed && a->num_conns == 0)
        admin_finish(a);
}

static void on_listener_close(uv_handle_t *h)
{
    admin_t *a = H2O_STRUCT_FROM_MEMBER(admin_t, listener, h);
    a->listener_closed = true;
    maybe_finish(a);
}

static void on_audit_timer_close(uv_handle_t *h)
{
    admin_t *a = h->data;
    a->audit_timer_closed = true;
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

int admin_start(uv_loop_t *loop, const llmrelay_config_t *cfg, config_store_t *store, const admin_node_ops_t *ops,
                admin_t **out, char *err, size_t errlen)
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
    if (ops != NULL)
        a->ops = *ops;
    a->etcd = a->ops.etcd;
    const char *prefix =
        cfg->etcd_prefix != NULL && cfg->etcd_prefix[0] != '\0' ? cfg->etcd_prefix : CONFIG_STORE_DEFAULT_PREFIX;
    const char *node = cfg->name != NULL && admin_name_valid(cfg->name, strlen(cfg->name)) ? cfg->name : "node";
    if (strlen(prefix) >= sizeof(a->prefix) - 1) {
        free(a);
        snprintf(err, errlen, "admin: etcd prefix too long");
        return -EINVAL;
    }
    snprintf(a->prefix, sizeof(a->prefix), "%s%s", prefix, prefix[strlen(prefix) - 1] == '/' ? "" : "/");
    a->prefix_len = strlen(a->prefix);
    snprintf(a->node, sizeof(a->node), "%s", node);
    a->audit_ring = calloc(ADMIN_AUDIT_MAX_BUFFERED, sizeof(*a->audit_ring));
    if (a->audit_ring == NULL) {
        free(a);
        snprintf(err, errlen, "admin: out of memory");
        return -ENOMEM;
    }
    h2o_linklist_init_anchor(&a->conns);
    h2o_linklist_init_anchor(&a->pending);

    int rc;
    if (cfg->admin_token_file != NULL && (rc = read_bootstrap_token(a, cfg->admin_token_file, err, errlen)) != 0) {
        free(a->audit_ring);
        free(a);
        return rc;
    }
    int fd;
    if ((rc = util_listen_tcp(cfg->admin_listen, "admin listener", &fd, &a->port, err, errlen)) != 0) {
        free(a->audit_ring);
        explicit_bzero(a, sizeof(*a));
        free(a);
        return rc;
    }
    uv_timer_init(loop, &a->audit_timer);
    a->audit_timer.data = a;

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
    uv_close((uv_handle_t *)&a->audit_timer, on_audit_timer_close);
    /* The etcd client may be destroyed right after we return: nothing of ours may stay in it. */
    if (a->etcd != NULL)
        etcd_cancel_data(a->etcd, a);
    a->audit_inflight = 0;
    a->sweeping = false;
    while (!h2o_linklist_is_empty(&a->pending)) {
        admin_write_t *w = H2O_STRUCT_FROM_MEMBER(admin_write_t, link, a->pending.next);
        admin_req_t *r = write_detach(w); /* the store's or node's callback will only free w */
        if (r != NULL)
            send_error(r, 503, "shutting_down",
                       "the admin listener is shutting down; a write may or may not "
                       "have been applied");
        if (w->via_etcd) { /* ours to cancel and free */
            etcd_cancel_data(a->etcd, w);
            write_free(w);
        }
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
