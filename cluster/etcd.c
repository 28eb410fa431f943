/* etcd: asynchronous etcd 3.4 client over the JSON gateway, driven by curl_uv.
 *
 * Unary calls (range, put, delete, txn, lease grant/keepalive/revoke) are one POST each
 * (struct etcd_req): the JSON body is built once, sent to the client's current endpoint,
 * and the whole (bounded) answer is parsed with yajl_tree when the transfer ends. A
 * transport failure, a 503 or gRPC UNAVAILABLE moves the client's current endpoint to the
 * next one and retries the request there, up to a bounded number of attempts; requests
 * that are not safe to repeat (txn, lease grant) are retried only when the connection
 * could not be made at all (so they were certainly not sent).
 *
 * Gateway traps handled here: zero values are omitted (absent `kvs`, `succeeded`, event
 * `type`, `TTL`...), int64s are JSON strings, keys/values are base64, errors come as
 * {"error","code"} with a gRPC code.
 *
 * Watches (struct etcd_watch) are one long-lived POST /v3/watch each. The gateway streams
 * one JSON object per message ({"result":{...}}); the curl write callback only appends to
 * a bounded buffer and tracks where complete top-level objects end (a small brace/string
 * scanner), then arms a zero timer. The timer callback parses and delivers the messages
 * — outside curl's callbacks, so the user callback may stop the watch or destroy the
 * client. When the stream ends or fails, the watch reports the outage once and reconnects
 * with backoff from the last seen revision + 1, on the next endpoint. Dead connections are
 * detected by TCP keepalive and a curl low-speed limit sized to etcd's progress
 * notifications (requested with progress_notify).
 */
#include "cluster/etcd.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <yajl/yajl_tree.h>

#define REQ_CONNECT_TIMEOUT_MS 1000L
#define REQ_TIMEOUT_MS 5000L
#define REQ_MAX_BODY (16u << 20)
#define WATCH_BACKOFF_MIN_MS 100
#define WATCH_BACKOFF_MAX_MS 2000

/* --- small growable buffer ---------------------------------------------------------- */
struct buf {
    char *p;
    size_t len, cap;
};

static void buf_free(struct buf *b)
{
    if (b->p != NULL) {
        explicit_bzero(b->p, b->cap);
        free(b->p);
    }
    b->p = NULL;
    b->len = b->cap = 0;
}

static int buf_reserve(struct buf *b, size_t extra, size_t max)
{
    if (b->len + extra + 1 > max)
        return -EFBIG;
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    if (cap > max)
        cap = max;
    char *p = malloc(cap);
    if (p == NULL)
        return -ENOMEM;
    if (b->p != NULL) {
        memcpy(p, b->p, b->len);
        explicit_bzero(b->p, b->cap);
        free(b->p);
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_add(struct buf *b, const void *d, size_t n)
{
    int rc = buf_reserve(b, n, REQ_MAX_BODY);
    if (rc != 0)
        return rc;
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int buf_str(struct buf *b, const char *s)
{
    return buf_add(b, s, strlen(s));
}

static int buf_b64(struct buf *b, const uint8_t *d, size_t n)
{
    if (n > REQ_MAX_BODY)
        return -EFBIG;
    size_t out = 4 * ((n + 2) / 3);
    int rc = buf_reserve(b, out, REQ_MAX_BODY);
    if (rc != 0)
        return rc;
    EVP_EncodeBlock((unsigned char *)b->p + b->len, d, (int)n);
    b->len += out;
    b->p[b->len] = '\0';
    return 0;
}

/* "name":"<b64>" with a leading comma when needed */
static int buf_field_b64(struct buf *b, bool comma, const char *name, const uint8_t *d, size_t n)
{
    int rc = 0;
    if (comma)
        rc |= buf_str(b, ",");
    rc |= buf_str(b, "\"");
    rc |= buf_str(b, name);
    rc |= buf_str(b, "\":\"");
    rc |= buf_b64(b, d, n);
    rc |= buf_str(b, "\"");
    return rc ? -ENOMEM : 0;
}

static int buf_field_i64(struct buf *b, bool comma, const char *name, int64_t v)
{
    char tmp[64];
    snprintf(tmp, sizeof(tmp), "%s\"%s\":\"%lld\"", comma ? "," : "", name, (long long)v);
    return buf_str(b, tmp);
}

/* --- JSON helpers ------------------------------------------------------------------- */
static yajl_val jget(yajl_val obj, const char *name)
{
    if (!YAJL_IS_OBJECT(obj))
        return NULL;
    for (size_t i = 0; i < obj->u.object.len; i++)
        if (strcmp(obj->u.object.keys[i], name) == 0)
            return obj->u.object.values[i];
    return NULL;
}

/* String value, "" when absent or not a string. */
static const char *jstr(yajl_val v)
{
    return YAJL_IS_STRING(v) && v->u.string != NULL ? v->u.string : "";
}

/* int64 given as a JSON string (the gateway's way) or number; absent = 0. */
static int64_t jint(yajl_val obj, const char *name)
{
    yajl_val v = jget(obj, name);
    const char *str = YAJL_IS_STRING(v) ? v->u.string : NULL;
    if (str != NULL)
        return strtoll(str, NULL, 10);
    if (YAJL_IS_INTEGER(v))
        return YAJL_GET_INTEGER(v);
    return 0;
}

static bool jtrue(yajl_val obj, const char *name)
{
    return YAJL_IS_TRUE(jget(obj, name));
}

static int64_t header_revision(yajl_val obj)
{
    return jint(jget(obj, "header"), "revision");
}

/* Decodes base64 into a fresh malloc'd buffer (NUL-terminated for convenience). */
static int b64_decode(const char *s, uint8_t **out, size_t *out_len)
{
    size_t n = s ? strlen(s) : 0;
    *out = NULL;
    *out_len = 0;
    if (n % 4 != 0)
        return -EPROTO;
    uint8_t *p = malloc(n / 4 * 3 + 1);
    if (p == NULL)
        return -ENOMEM;
    int len = n ? EVP_DecodeBlock(p, (const unsigned char *)s, (int)n) : 0;
    if (len < 0) {
        free(p);
        return -EPROTO;
    }
    if (n >= 1 && s[n - 1] == '=')
        len--;
    if (n >= 2 && s[n - 2] == '=')
        len--;
    p[len] = 0;
    *out = p;
    *out_len = (size_t)len;
    return 0;
}

static void kvs_free(etcd_kv_t *kvs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kvs[i].key);
        if (kvs[i].value != NULL) {
            explicit_bzero(kvs[i].value, kvs[i].value_len);
            free(kvs[i].value);
        }
    }
    free(kvs);
}

static int kv_parse(yajl_val o, etcd_kv_t *kv)
{
    memset(kv, 0, sizeof(*kv));
    yajl_val k = jget(o, "key"), v = jget(o, "value");
    int rc = b64_decode(jstr(k), &kv->key, &kv->key_len);
    if (rc == 0)
        rc = b64_decode(jstr(v), &kv->value, &kv->value_len);
    kv->create_revision = jint(o, "create_revision");
    kv->mod_revision = jint(o, "mod_revision");
    kv->version = jint(o, "version");
    kv->lease = jint(o, "lease");
    return rc;
}

/* Parses the "kvs" array of a range response (absent = empty). */
static int kvs_parse(yajl_val resp, etcd_kv_t **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    yajl_val arr = jget(resp, "kvs");
    if (arr == NULL)
        return 0;
    if (!YAJL_IS_ARRAY(arr))
        return -EPROTO;
    size_t n = arr->u.array.len;
    if (n == 0)
        return 0;
    etcd_kv_t *kvs = calloc(n, sizeof(*kvs));
    if (kvs == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int rc = kv_parse(arr->u.array.values[i], &kvs[i]);
        if (rc != 0) {
            kvs_free(kvs, i + 1);
            return rc;
        }
    }
    *out = kvs;
    *n_out = n;
    return 0;
}

static int grpc_to_errno(int64_t code)
{
    switch (code) {
    case 1:
        return -ECANCELED;
    case 3:
    case 9:
        return -EINVAL;
    case 4:
        return -ETIMEDOUT;
    case 5:
        return -ENOENT;
    case 6:
        return -EEXIST;
    case 7:
    case 16:
        return -EACCES;
    case 8:
        return -ENOSPC;
    case 11:
        return -ERANGE;
    case 14:
        return -EAGAIN;
    default:
        return -EIO;
    }
}

static int curl_to_errno(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
        return -EHOSTUNREACH;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    case CURLE_WRITE_ERROR:
        return -EFBIG;
    default:
        return -EIO;
    }
}

/* --- client ------------------------------------------------------------------------- */
enum req_kind { REQ_RANGE, REQ_PUT, REQ_DELETE, REQ_TXN, REQ_GRANT, REQ_KEEPALIVE, REQ_REVOKE };

struct etcd_req {
    etcd_client_t *c;
    enum req_kind kind;
    const char *path;
    struct buf body;
    struct buf resp;
    CURL *easy;
    unsigned attempts;
    unsigned endpoint;
    union {
        etcd_range_cb range;
        etcd_done_cb done;
        etcd_delete_cb del;
        etcd_txn_cb txn;
        etcd_lease_cb lease;
    } cb;
    void *data;
    struct etcd_req *prev, *next;
};

struct etcd_watch {
    etcd_client_t *c;
    uint8_t *key, *range_end;
    size_t key_len, range_end_len;
    int64_t next_rev; /* 0 = from now */
    etcd_watch_cb cb;
    void *data;
    CURL *easy; /* non-NULL while a stream is attached to curl_uv */
    unsigned endpoint;
    struct buf body;
    struct buf stream;
    size_t scan_pos, complete_end; /* scanner over stream */
    int depth;
    bool in_str, esc;
    uv_timer_t dispatch_timer, retry_timer;
    int handles_open;
    unsigned failures;
    bool outage_reported, stopped, finished;
    struct etcd_watch *prev, *next;
};

struct etcd_client {
    uv_loop_t *loop;
    curl_uv_t *cu;
    char *endpoints[ETCD_MAX_ENDPOINTS];
    unsigned n_endpoints;
    unsigned current;
    bool reachable;
    long watch_idle_s;
    struct curl_slist *headers, *watch_headers;
    struct etcd_req *reqs;
    struct etcd_watch *watches;
};

static void endpoint_failed(etcd_client_t *c, unsigned endpoint)
{
    c->reachable = false;
    if (c->current == endpoint)
        c->current = (c->current + 1) % c->n_endpoints;
}

static size_t req_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct etcd_req *r = userdata;
    size_t n = size * nmemb;
    if (buf_reserve(&r->resp, n, ETCD_MAX_RESPONSE) != 0)
        return 0; /* CURLE_WRITE_ERROR */
    memcpy(r->resp.p + r->resp.len, ptr, n);
    r->resp.len += n;
    r->resp.p[r->resp.len] = '\0';
    return n;
}

static void req_free(struct etcd_req *r)
{
    if (r->easy != NULL)
        curl_easy_cleanup(r->easy);
    buf_free(&r->body);
    buf_free(&r->resp);
    free(r);
}

static void req_unlink(etcd_client_t *c, struct etcd_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        c->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void req_done(CURL *easy, CURLcode result, void *data);

static int req_send(struct etcd_req *r)
{
    etcd_client_t *c = r->c;
    char url[512];
    r->endpoint = c->current;
    r->attempts++;
    snprintf(url, sizeof(url), "%s%s", c->endpoints[r->endpoint], r->path);
    buf_free(&r->resp);
    curl_easy_setopt(r->easy, CURLOPT_URL, url);
    return curl_uv_add(c->cu, r->easy, req_done, r);
}

static unsigned max_attempts(const etcd_client_t *c)
{
    unsigned n = 2 * c->n_endpoints;
    return n < 2 ? 2 : n > 8 ? 8 : n;
}

/* Calls the request's callback with an error. */
static void req_fail(struct etcd_req *r, int status)
{
    etcd_client_t *c = r->c;
    switch (r->kind) {
    case REQ_RANGE:
        r->cb.range(c, status, 0, NULL, 0, false, r->data);
        break;
    case REQ_PUT:
    case REQ_REVOKE:
        r->cb.done(c, status, 0, r->data);
        break;
    case REQ_DELETE:
        r->cb.del(c, status, 0, 0, r->data);
        break;
    case REQ_TXN:
        r->cb.txn(c, status, false, 0, NULL, 0, r->data);
        break;
    case REQ_GRANT:
    case REQ_KEEPALIVE:
        r->cb.lease(c, status, 0, 0, r->data);
        break;
    }
}

static int txn_deliver(struct etcd_req *r, yajl_val root)
{
    yajl_val arr = jget(root, "responses");
    size_t n = YAJL_IS_ARRAY(arr) ? arr->u.array.len : 0;
    etcd_op_result_t *res = n ? calloc(n, sizeof(*res)) : NULL;
    etcd_kv_t **kvs = n ? calloc(n, sizeof(*kvs)) : NULL;
    int rc = 0;
    if (n && (res == NULL || kvs == NULL))
        rc = -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        yajl_val o = arr->u.array.values[i], sub;
        if ((sub = jget(o, "response_range")) != NULL) {
            res[i].type = ETCD_OP_RANGE;
            rc = kvs_parse(sub, &kvs[i], &res[i].n_kvs);
            res[i].kvs = kvs[i];
            res[i].more = jtrue(sub, "more");
        } else if ((sub = jget(o, "response_delete_range")) != NULL) {
            res[i].type = ETCD_OP_DELETE;
            res[i].deleted = jint(sub, "deleted");
        } else {
            res[i].type = ETCD_OP_PUT;
        }
    }
    if (rc == 0)
        r->cb.txn(r->c, 0, jtrue(root, "succeeded"), header_revision(root), res, n, r->data);
    for (size_t i = 0; i < n && kvs; i++)
        if (kvs[i])
            kvs_free(kvs[i], res[i].n_kvs);
    free(kvs);
    free(res);
    return rc;
}

/* Parses a 200 answer and calls the callback; returns <0 if it could not (the caller
 * then reports that error). */
static int req_deliver(struct etcd_req *r, yajl_val root)
{
    etcd_client_t *c = r->c;
    switch (r->kind) {
    case REQ_RANGE: {
        etcd_kv_t *kvs;
        size_t n;
        int rc = kvs_parse(root, &kvs, &n);
        if (rc != 0)
            return rc;
        r->cb.range(c, 0, header_revision(root), kvs, n, jtrue(root, "more"), r->data);
        kvs_free(kvs, n);
        return 0;
    }
    case REQ_PUT:
    case REQ_REVOKE:
        r->cb.done(c, 0, header_revision(root), r->data);
        return 0;
    case REQ_DELETE:
        r->cb.del(c, 0, header_revision(root), jint(root, "deleted"), r->data);
        return 0;
    case REQ_TXN:
        return txn_deliver(r, root);
    case REQ_GRANT:
        r->cb.lease(c, 0, jint(root, "ID"), jint(root, "TTL"), r->data);
        return 0;
    case REQ_KEEPALIVE: {
        yajl_val res = jget(root, "result");
        int64_t ttl = jint(res, "TTL");
        r->cb.lease(c, ttl > 0 ? 0 : -ENOENT, jint(res, "ID"), ttl, r->data);
        return 0;
    }
    }
    return -EPROTO;
}

static void req_done(CURL *easy, CURLcode result, void *data)
{
    struct etcd_req *r = data;
    etcd_client_t *c = r->c;
    long http = 0;
    int status = 0;
    bool retry = false;

    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &http);
    if (result != CURLE_OK) {
        status = curl_to_errno(result);
        if (result != CURLE_WRITE_ERROR && result != CURLE_OUT_OF_MEMORY) {
            bool not_sent = result == CURLE_COULDNT_CONNECT || result == CURLE_COULDNT_RESOLVE_HOST;
            bool repeatable = r->kind != REQ_TXN && r->kind != REQ_GRANT;
            endpoint_failed(c, r->endpoint);
            retry = not_sent || repeatable;
        }
    } else if (http != 200) {
        yajl_val root = r->resp.p ? yajl_tree_parse(r->resp.p, NULL, 0) : NULL;
        int64_t code = jint(root, "code");
        yajl_tree_free(root);
        status = code ? grpc_to_errno(code) : -EIO;
        if (http == 503 || code == 14) {
            endpoint_failed(c, r->endpoint);
            retry = true;
        } else {
            c->reachable = true;
        }
    } else {
        c->reachable = true;
    }

    if (retry && r->attempts < max_attempts(c) && req_send(r) == 0)
        return;

    req_unlink(c, r);
    if (status == 0) {
        yajl_val root = yajl_tree_parse(r->resp.p ? r->resp.p : "", NULL, 0);
        status = root ? req_deliver(r, root) : -EPROTO;
        yajl_tree_free(root);
    }
    if (status != 0)
        req_fail(r, status);
    /* c may be gone now (the callback may destroy the client): touch only r. */
    req_free(r);
}

static struct etcd_req *req_new(etcd_client_t *c, enum req_kind kind, const char *path, void *data)
{
    struct etcd_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->c = c;
    r->kind = kind;
    r->path = path;
    r->data = data;
    r->easy = curl_easy_init();
    if (r->easy == NULL) {
        free(r);
        return NULL;
    }
    return r;
}

/* Configures the easy handle and starts the request; frees it on failure. */
static int req_start(struct etcd_req *r)
{
    etcd_client_t *c = r->c;
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body.p);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)r->body.len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, req_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, REQ_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, REQ_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    int rc = req_send(r);
    if (rc != 0) {
        req_free(r);
        return rc;
    }
    r->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = r;
    c->reqs = r;
    return 0;
}

int etcd_client_create(uv_loop_t *loop, curl_uv_t *cu, const char *endpoints, etcd_client_t **out)
{
    *out = NULL;
    if (loop == NULL || cu == NULL || endpoints == NULL)
        return -EINVAL;
    etcd_client_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->loop = loop;
    c->cu = cu;
    c->watch_idle_s = 660;
    const char *p = endpoints;
    int rc = 0;
    while (*p && rc == 0) {
        size_t n = strcspn(p, ",");
        while (n > 0 && p[n - 1] == '/')
            n--; /* "http://h:2379/" -> "http://h:2379" */
        if (n > 0) {
            if (c->n_endpoints == ETCD_MAX_ENDPOINTS || n > 400)
                rc = -EINVAL;
            else if ((c->endpoints[c->n_endpoints++] = strndup(p, n)) == NULL)
                rc = -ENOMEM;
        }
        p += strcspn(p, ",");
        if (*p == ',')
            p++;
    }
    if (rc == 0 && c->n_endpoints == 0)
        rc = -EINVAL;
    if (rc == 0) {
        c->headers = curl_slist_append(NULL, "Content-Type: application/json");
        c->headers = curl_slist_append(c->headers, "Expect:");
        c->watch_headers = curl_slist_append(NULL, "Content-Type: application/json");
        c->watch_headers = curl_slist_append(c->watch_headers, "Expect:");
        c->watch_headers = curl_slist_append(c->watch_headers, "Grpc-Metadata-hasleader: true");
        if (c->headers == NULL || c->watch_headers == NULL)
            rc = -ENOMEM;
    }
    if (rc != 0) {
        etcd_client_destroy(c);
        return rc;
    }
    c->reachable = true;
    *out = c;
    return 0;
}

static void watch_teardown(etcd_watch_t *w);

void etcd_client_destroy(etcd_client_t *c)
{
    if (c == NULL)
        return;
    while (c->reqs != NULL) {
        struct etcd_req *r = c->reqs;
        req_unlink(c, r);
        curl_uv_remove(c->cu, r->easy);
        req_free(r);
    }
    while (c->watches != NULL)
        watch_teardown(c->watches);
    for (unsigned i = 0; i < c->n_endpoints; i++)
        free(c->endpoints[i]);
    curl_slist_free_all(c->headers);
    curl_slist_free_all(c->watch_headers);
    free(c);
}

bool etcd_client_reachable(const etcd_client_t *c)
{
    return c->reachable;
}

void etcd_client_set_watch_idle(etcd_client_t *c, long seconds)
{
    c->watch_idle_s = seconds > 0 ? seconds : 660;
}

void etcd_cancel_data(etcd_client_t *c, void *data)
{
    struct etcd_req *r = c->reqs;
    while (r != NULL) {
        struct etcd_req *next = r->next;
        if (r->data == data) {
            req_unlink(c, r);
            curl_uv_remove(c->cu, r->easy);
            req_free(r);
        }
        r = next;
    }
}

size_t etcd_prefix_end(const uint8_t *prefix, size_t prefix_len, uint8_t *out)
{
    size_t n = prefix_len;
    while (n > 0 && prefix[n - 1] == 0xff)
        n--;
    if (n == 0) {
        out[0] = 0;
        return 1;
    }
    memcpy(out, prefix, n);
    out[n - 1]++;
    return n;
}

/* --- unary operations --------------------------------------------------------------- */
static int range_body(struct buf *b, const uint8_t *key, size_t key_len, const uint8_t *range_end, size_t range_end_len,
                      int64_t limit, int64_t revision)
{
    int rc = buf_str(b, "{");
    rc |= buf_field_b64(b, false, "key", key, key_len);
    if (range_end != NULL)
        rc |= buf_field_b64(b, true, "range_end", range_end, range_end_len);
    if (limit > 0)
        rc |= buf_field_i64(b, true, "limit", limit);
    if (revision > 0)
        rc |= buf_field_i64(b, true, "revision", revision);
    rc |= buf_str(b, "}");
    return rc ? -ENOMEM : 0;
}

int etcd_range(etcd_client_t *c, const uint8_t *key, size_t key_len, const uint8_t *range_end, size_t range_end_len,
               int64_t limit, int64_t revision, etcd_range_cb cb, void *data)
{
    if (c == NULL || cb == NULL || (key == NULL && key_len > 0))
        return -EINVAL;
    struct etcd_req *r = req_new(c, REQ_RANGE, "/v3/kv/range", data);
    if (r == NULL)
        return -ENOMEM;
    r->cb.range = cb;
    int rc = range_body(&r->body, key, key_len, range_end, range_end_len, limit, revision);
    if (rc != 0) {
        req_free(r);
        return rc;
    }
    return req_start(r);
}

int etcd_range_prefix(etcd_client_t *c, const uint8_t *prefix, size_t prefix_len, int64_t limit, int64_t revision,
                      etcd_range_cb cb, void *data)
{
    uint8_t *end = malloc(prefix_len + 1);
    if (end == NULL)
        return -ENOMEM;
    size_t end_len = etcd_prefix_end(prefix, prefix_len, end);
    static const uint8_t zero = 0;
    int rc = etcd_range(c, prefix_len ? prefix : &zero, prefix_len ? prefix_len : 1, end, end_len, limit, revision, cb,
                        data);
    free(end);
    return rc;
}

static int put_body(struct buf *b, const uint8_t *key, size_t key_len, const uint8_t *value, size_t value_len,
                    int64_t lease)
{
    int rc = buf_str(b, "{");
    rc |= buf_field_b64(b, false, "key", key, key_len);
    rc |= buf_field_b64(b, true, "value", value, value_len);
    if (lease != 0)
        rc |= buf_field_i64(b, true, "lease", lease);
    rc |= buf_str(b, "}");
    return rc ? -ENOMEM : 0;
}

int etcd_put(etcd_client_t *c, const uint8_t *key, size_t key_len, const uint8_t *value, size_t value_len,
             int64_t lease, etcd_done_cb cb, void *data)
{
    if (c == NULL || cb == NULL || key == NULL || key_len == 0 || (value == NULL && value_len > 0))
        return -EINVAL;
    struct etcd_req *r = req_new(c, REQ_PUT, "/v3/kv/put", data);
    if (r == NULL)
        return -ENOMEM;
    r->cb.done = cb;
    int rc = put_body(&r->body, key, key_len, value, value_len, lease);
    if (rc != 0) {
        req_free(r);
        return rc;
    }
    return req_start(r);
}

int etcd_delete(etcd_client_t *c, const uint8_t *key, size_t key_len, const uint8_t *range_end, size_t range_end_len,
                etcd_delete_cb cb, void *data)
{
    if (c == NULL || cb == NULL || key == NULL || key_len == 0)
        return -EINVAL;
    struct etcd_req *r = req_new(c, REQ_DELETE, "/v3/kv/deleterange", data);
    if (r == NULL)
        return -ENOMEM;
    r->cb.del = cb;
    int rc = range_body(&r->body, key, key_len, range_end, range_end_len, 0, 0);
    if (rc != 0) {
        req_free(r);
        return rc;
    }
    return req_start(r);
}

static int txn_ops(struct buf *b, const char *name, const etcd_op_t *ops, size_t n)
{
    int rc = buf_str(b, ",\"");
    rc |= buf_str(b, name);
    rc |= buf_str(b, "\":[");
    for (size_t i = 0; i < n && rc == 0; i++) {
        const etcd_op_t *op = &ops[i];
        if (i > 0)
            rc |= buf_str(b, ",");
        switch (op->type) {
        case ETCD_OP_PUT:
            rc |= buf_str(b, "{\"request_put\":");
            rc |= put_body(b, op->key, op->key_len, op->value, op->value_len, op->lease);
            break;
        case ETCD_OP_DELETE:
            rc |= buf_str(b, "{\"request_delete_range\":");
            rc |= range_body(b, op->key, op->key_len, op->range_end, op->range_end_len, 0, 0);
            break;
        case ETCD_OP_RANGE:
            rc |= buf_str(b, "{\"request_range\":");
            rc |= range_body(b, op->key, op->key_len, op->range_end, op->range_end_len, op->limit, 0);
            break;
        default:
            return -EINVAL;
        }
        rc |= buf_str(b, "}");
    }
    rc |= buf_str(b, "]");
    return rc ? -ENOMEM : 0;
}

int etcd_txn(etcd_client_t *c, const etcd_compare_t *compares, size_t n_compares, const etcd_op_t *success,
             size_t n_success, const etcd_op_t *failure, size_t n_failure, etcd_txn_cb cb, void *data)
{
    static const char *targets[] = {"VERSION", "CREATE", "MOD", "VALUE"};
    static const char *results[] = {"EQUAL", "GREATER", "LESS", "NOT_EQUAL"};
    static const char *fields[] = {"version", "create_revision", "mod_revision", "value"};
    if (c == NULL || cb == NULL || n_compares + n_success + n_failure > 256)
        return -EINVAL;
    struct etcd_req *r = req_new(c, REQ_TXN, "/v3/kv/txn", data);
    if (r == NULL)
        return -ENOMEM;
    r->cb.txn = cb;
    struct buf *b = &r->body;
    int rc = buf_str(b, "{\"compare\":[");
    for (size_t i = 0; i < n_compares && rc == 0; i++) {
        const etcd_compare_t *cmp = &compares[i];
        if ((unsigned)cmp->target > ETCD_TARGET_VALUE || (unsigned)cmp->result > ETCD_CMP_NOT_EQUAL) {
            rc = -EINVAL;
            break;
        }
        rc |= buf_str(b, i ? ",{" : "{");
        rc |= buf_field_b64(b, false, "key", cmp->key, cmp->key_len);
        rc |= buf_str(b, ",\"target\":\"");
        rc |= buf_str(b, targets[cmp->target]);
        rc |= buf_str(b, "\",\"result\":\"");
        rc |= buf_str(b, results[cmp->result]);
        rc |= buf_str(b, "\"");
        if (cmp->target == ETCD_TARGET_VALUE)
            rc |= buf_field_b64(b, true, fields[cmp->target], cmp->value, cmp->value_len);
        else
            rc |= buf_field_i64(b, true, fields[cmp->target], cmp->number);
        rc |= buf_str(b, "}");
    }
    if (rc == 0)
        rc |= buf_str(b, "]");
    if (rc == 0)
        rc = txn_ops(b, "success", success, n_success);
    if (rc == 0)
        rc = txn_ops(b, "failure", failure, n_failure);
    if (rc == 0)
        rc = buf_str(b, "}");
    if (rc != 0) {
        req_free(r);
        return rc < 0 ? rc : -ENOMEM;
    }
    return req_start(r);
}

static int lease_req(etcd_client_t *c, enum req_kind kind, const char *path, const char *field, int64_t v,
                     struct etcd_req **out, void *data)
{
    struct etcd_req *r = req_new(c, kind, path, data);
    if (r == NULL)
        return -ENOMEM;
    int rc = buf_str(&r->body, "{");
    rc |= buf_field_i64(&r->body, false, field, v);
    rc |= buf_str(&r->body, "}");
    if (rc != 0) {
        req_free(r);
        return -ENOMEM;
    }
    *out = r;
    return 0;
}

int etcd_lease_grant(etcd_client_t *c, int64_t ttl_s, etcd_lease_cb cb, void *data)
{
    struct etcd_req *r;
    if (c == NULL || cb == NULL || ttl_s <= 0)
        return -EINVAL;
    int rc = lease_req(c, REQ_GRANT, "/v3/lease/grant", "TTL", ttl_s, &r, data);
    if (rc != 0)
        return rc;
    r->cb.lease = cb;
    return req_start(r);
}

int etcd_lease_keepalive(etcd_client_t *c, int64_t lease_id, etcd_lease_cb cb, void *data)
{
    struct etcd_req *r;
    if (c == NULL || cb == NULL || lease_id == 0)
        return -EINVAL;
    int rc = lease_req(c, REQ_KEEPALIVE, "/v3/lease/keepalive", "ID", lease_id, &r, data);
    if (rc != 0)
        return rc;
    r->cb.lease = cb;
    return req_start(r);
}

int etcd_lease_revoke(etcd_client_t *c, int64_t lease_id, etcd_done_cb cb, void *data)
{
    struct etcd_req *r;
    if (c == NULL || cb == NULL || lease_id == 0)
        return -EINVAL;
    int rc = lease_req(c, REQ_REVOKE, "/v3/lease/revoke", "ID", lease_id, &r, data);
    if (rc != 0)
        return rc;
    r->cb.done = cb;
    return req_start(r);
}

/* --- watches ------------------------------------------------------------------------ */
static void watch_connect(etcd_watch_t *w);

static void watch_close_cb(uv_handle_t *h)
{
    etcd_watch_t *w = h->data;
    if (--w->handles_open == 0)
        free(w);
}

static void watch_detach_stream(etcd_watch_t *w)
{
    if (w->easy != NULL) {
        curl_uv_remove(w->c->cu, w->easy);
        curl_easy_cleanup(w->easy);
        w->easy = NULL;
    }
}

/* Stops everything and releases the watch (freed once its timers are closed). */
static void watch_teardown(etcd_watch_t *w)
{
    etcd_client_t *c = w->c;
    watch_detach_stream(w);
    w->stopped = true;
    if (w->prev)
        w->prev->next = w->next;
    else
        c->watches = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
    free(w->key);
    free(w->range_end);
    w->key = w->range_end = NULL;
    buf_free(&w->body);
    buf_free(&w->stream);
    uv_timer_stop(&w->dispatch_timer);
    uv_timer_stop(&w->retry_timer);
    uv_close((uv_handle_t *)&w->dispatch_timer, watch_close_cb);
    uv_close((uv_handle_t *)&w->retry_timer, watch_close_cb);
}

static void watch_retry_cb(uv_timer_t *t)
{
    etcd_watch_t *w = t->data;
    if (!w->stopped && !w->finished && w->easy == NULL)
        watch_connect(w);
}

/* The stream is gone (ended, failed, or refused by etcd): report once, reconnect later. */
static void watch_stream_lost(etcd_watch_t *w, int status)
{
    watch_detach_stream(w);
    w->stream.len = 0;
    w->scan_pos = w->complete_end = 0;
    w->depth = 0;
    w->in_str = w->esc = false;
    if (w->finished || w->stopped)
        return;
    endpoint_failed(w->c, w->endpoint);
    uint64_t delay = WATCH_BACKOFF_MIN_MS << (w->failures < 5 ? w->failures : 5);
    if (delay > WATCH_BACKOFF_MAX_MS)
        delay = WATCH_BACKOFF_MAX_MS;
    w->failures++;
    uv_timer_start(&w->retry_timer, watch_retry_cb, delay, 0);
    if (!w->outage_reported) {
        w->outage_reported = true;
        w->cb(w, status < 0 ? status : -EIO, NULL, 0, 0, 0, w->data);
    }
}

void etcd_client_reset_watches(etcd_client_t *c, int status)
{
    etcd_watch_t *w = c->watches;
    while (w != NULL) {
        etcd_watch_t *next = w->next;
        if (w->easy != NULL && !w->finished && !w->stopped)
            watch_stream_lost(w, status < 0 ? status : -EIO);
        w = next;
    }
}

/* Handles one stream message. Returns 0, or <0 if the stream must be dropped. */
static int watch_message(etcd_watch_t *w, yajl_val root)
{
    yajl_val res = jget(root, "result");
    if (res == NULL) {
        yajl_val err = jget(root, "error");
        int64_t code = jint(YAJL_IS_OBJECT(err) ? err : root, YAJL_IS_OBJECT(err) ? "grpc_code" : "code");
        return code ? grpc_to_errno(code) : -EIO;
    }
    int64_t rev = header_revision(res);
    int64_t compact = jint(res, "compact_revision");
    if (compact > 0) {
        w->finished = true;
        w->cb(w, 0, NULL, 0, rev, compact, w->data);
        return 0;
    }
    if (jtrue(res, "canceled"))
        return -ECANCELED;
    yajl_val evs = jget(res, "events");
    size_t n = YAJL_IS_ARRAY(evs) ? evs->u.array.len : 0;
    if (n == 0) {
        if (jtrue(res, "created")) {
            if (w->next_rev == 0)
                w->next_rev = rev + 1;
        } else if (rev + 1 > w->next_rev) {
            w->next_rev = rev + 1; /* progress notification: all events up to rev were sent */
        }
        w->failures = 0;
        w->outage_reported = false;
        w->cb(w, 0, NULL, 0, rev, 0, w->data);
        return 0;
    }
    etcd_watch_event_t *ev = calloc(n, sizeof(*ev));
    if (ev == NULL)
        return -ENOMEM;
    int rc = 0;
    size_t i;
    for (i = 0; i < n && rc == 0; i++) {
        yajl_val e = evs->u.array.values[i];
        yajl_val type = jget(e, "type");
        ev[i].type = strcmp(jstr(type), "DELETE") == 0 ? ETCD_EVENT_DELETE : ETCD_EVENT_PUT;
        rc = kv_parse(jget(e, "kv"), &ev[i].kv);
        if (ev[i].kv.mod_revision + 1 > w->next_rev)
            w->next_rev = ev[i].kv.mod_revision + 1;
    }
    if (rc == 0) {
        w->failures = 0;
        w->outage_reported = false;
        w->cb(w, 0, ev, n, rev, 0, w->data);
    }
    for (size_t j = 0; j < i; j++) {
        free(ev[j].kv.key);
        if (ev[j].kv.value) {
            explicit_bzero(ev[j].kv.value, ev[j].kv.value_len);
            free(ev[j].kv.value);
        }
    }
    free(ev);
    return rc;
}

/* End of the top-level JSON object starting at or after `from`, or 0 if incomplete. */
static size_t object_end(const char *p, size_t len, size_t from)
{
    int depth = 0;
    bool in_str = false, esc = false;
    for (size_t i = from; i < len; i++) {
        char ch = p[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (ch == '\\')
                esc = true;
            else if (ch == '"')
                in_str = false;
        } else if (ch == '"') {
            in_str = true;
        } else if (ch == '{' || ch == '[') {
            depth++;
        } else if (ch == '}' || ch == ']') {
            if (--depth == 0)
                return i + 1;
        }
    }
    return 0;
}

/* Delivers the complete messages buffered so far. Runs from a timer or a done callback,
 * never inside curl's callbacks, so the user callback may stop the watch. */
static void watch_dispatch(etcd_watch_t *w)
{
    size_t pos = 0;
    int status = 0;
    while (!w->stopped && !w->finished && pos < w->complete_end) {
        size_t end = object_end(w->stream.p, w->complete_end, pos);
        if (end == 0)
            break;
        char saved = w->stream.p[end];
        w->stream.p[end] = '\0';
        char err[128];
        yajl_val root = yajl_tree_parse(w->stream.p + pos, err, sizeof(err));
        w->stream.p[end] = saved;
        pos = end;
        status = root ? watch_message(w, root) : -EPROTO;
        yajl_tree_free(root);
        if (status != 0)
            break;
    }
    if (w->stopped)
        return; /* stopped by the callback: w is closing, touch nothing else */
    if (w->finished) {
        watch_detach_stream(w);
        return;
    }
    if (status != 0) {
        watch_stream_lost(w, status);
        return;
    }
    /* Keep the incomplete tail. */
    memmove(w->stream.p, w->stream.p + pos, w->stream.len - pos);
    w->stream.len -= pos;
    w->complete_end -= pos;
    w->scan_pos -= pos;
}

static void watch_dispatch_cb(uv_timer_t *t)
{
    etcd_watch_t *w = t->data;
    if (!w->stopped)
        watch_dispatch(w);
}

static size_t watch_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    etcd_watch_t *w = userdata;
    size_t n = size * nmemb;
    if (buf_reserve(&w->stream, n, ETCD_MAX_RESPONSE) != 0)
        return 0;
    memcpy(w->stream.p + w->stream.len, ptr, n);
    w->stream.len += n;
    for (size_t i = w->scan_pos; i < w->stream.len; i++) {
        char ch = w->stream.p[i];
        if (w->in_str) {
            if (w->esc)
                w->esc = false;
            else if (ch == '\\')
                w->esc = true;
            else if (ch == '"')
                w->in_str = false;
        } else if (ch == '"') {
            w->in_str = true;
        } else if (ch == '{' || ch == '[') {
            w->depth++;
        } else if (ch == '}' || ch == ']') {
            if (--w->depth == 0)
                w->complete_end = i + 1;
            else if (w->depth < 0)
                return 0; /* garbage */
        }
    }
    w->scan_pos = w->stream.len;
    if (w->complete_end > 0)
        uv_timer_start(&w->dispatch_timer, watch_dispatch_cb, 0, 0);
    return n;
}

static void watch_done(CURL *easy, CURLcode result, void *data)
{
    etcd_watch_t *w = data;
    long http = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &http);
    curl_easy_cleanup(easy);
    w->easy = NULL;
    /* Deliver what arrived before the end (a final error message included). */
    uv_timer_stop(&w->dispatch_timer);
    watch_dispatch(w);
    if (w->stopped || w->finished || w->easy != NULL)
        return;
    int status = result != CURLE_OK ? curl_to_errno(result) : http != 200 ? -EIO : -ECONNRESET;
    watch_stream_lost(w, status);
}

static void watch_connect(etcd_watch_t *w)
{
    etcd_client_t *c = w->c;
    buf_free(&w->body);
    struct buf *b = &w->body;
    int rc = buf_str(b, "{\"create_request\":{");
    rc |= buf_field_b64(b, false, "key", w->key, w->key_len);
    if (w->range_end != NULL)
        rc |= buf_field_b64(b, true, "range_end", w->range_end, w->range_end_len);
    if (w->next_rev > 0)
        rc |= buf_field_i64(b, true, "start_revision", w->next_rev);
    rc |= buf_str(b, ",\"progress_notify\":true}}");
    CURL *e = rc == 0 ? curl_easy_init() : NULL;
    if (e == NULL) {
        watch_stream_lost(w, -ENOMEM);
        return;
    }
    char url[512];
    w->endpoint = c->current;
    snprintf(url, sizeof(url), "%s/v3/watch", c->endpoints[w->endpoint]);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, w->body.p);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)w->body.len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->watch_headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, watch_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, w);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, REQ_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, c->watch_idle_s);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 10L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 5L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    /* A watch holds its connection for its whole life: never share it. */
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    w->stream.len = 0;
    w->scan_pos = w->complete_end = 0;
    w->depth = 0;
    w->in_str = w->esc = false;
    w->easy = e;
    if (curl_uv_add(c->cu, e, watch_done, w) != 0) {
        curl_easy_cleanup(e);
        w->easy = NULL;
        watch_stream_lost(w, -ENOMEM);
    }
}

etcd_watch_t *etcd_watch_start(etcd_client_t *c, const uint8_t *key, size_t key_len, const uint8_t *range_end,
                               size_t range_end_len, int64_t start_revision, etcd_watch_cb cb, void *data)
{
    if (c == NULL || cb == NULL || key == NULL || key_len == 0)
        return NULL;
    etcd_watch_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->key = malloc(key_len);
    w->range_end = range_end ? malloc(range_end_len ? range_end_len : 1) : NULL;
    if (w->key == NULL || (range_end && w->range_end == NULL)) {
        free(w->key);
        free(w->range_end);
        free(w);
        return NULL;
    }
    memcpy(w->key, key, key_len);
    w->key_len = key_len;
    if (range_end) {
        memcpy(w->range_end, range_end, range_end_len);
        w->range_end_len = range_end_len;
    }
    w->c = c;
    w->next_rev = start_revision > 0 ? start_revision : 0;
    w->cb = cb;
    w->data = data;
    uv_timer_init(c->loop, &w->dispatch_timer);
    uv_timer_init(c->loop, &w->retry_timer);
    w->dispatch_timer.data = w->retry_timer.data = w;
    w->handles_open = 2;
    w->next = c->watches;
    if (c->watches)
        c->watches->prev = w;
    c->watches = w;
    /* Connect from the loop, so the callback never runs inside this call. */
    uv_timer_start(&w->retry_timer, watch_retry_cb, 0, 0);
    return w;
}

etcd_watch_t *etcd_watch_prefix(etcd_client_t *c, const uint8_t *prefix, size_t prefix_len, int64_t start_revision,
                                etcd_watch_cb cb, void *data)
{
    static const uint8_t zero = 0;
    uint8_t *end = malloc(prefix_len + 1);
    if (end == NULL)
        return NULL;
    size_t end_len = etcd_prefix_end(prefix, prefix_len, end);
    etcd_watch_t *w = etcd_watch_start(c, prefix_len ? prefix : &zero, prefix_len ? prefix_len : 1, end, end_len,
                                       start_revision, cb, data);
    free(end);
    return w;
}

void etcd_watch_stop(etcd_watch_t *w)
{
    if (w == NULL || w->stopped)
        return;
    watch_teardown(w);
}

etcd_client_t *etcd_watch_client(const etcd_watch_t *w)
{
    return w->c;
}
