/* test_admin.c — the admin API against a real etcd.
 *
 * A loop thread runs what node/main.c runs on its main loop (curl_uv + etcd client +
 * config store + admin listener on 127.0.0.1:0); the test thread drives it over HTTP with
 * libcurl's easy interface, as llmrelayctl does. A second environment points the store at a
 * dead etcd port with no token anywhere, for the "no admin token configured" and
 * not-ready cases. Pure helpers (masking, names, IP truncation, durations) are tested without
 * a loop.
 *
 * The node's side of admin_node_ops_t is stubbed here: a clock the test moves (audit sweep),
 * fixed spending for one key, and logs/usage answers (one synchronous, one from a timer).
 * Every /admin/v1/ call of the live tests carries a request id of its own; the audit test
 * reads etcd directly and finds an entry for each, with no secret in any of them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <h2o.h>
#include <uv.h>
#include <yajl/yajl_tree.h>

#include "cluster/config_store.h"
#include "cluster/curl_uv.h"
#include "cluster/etcd.h"
#include "cluster/tests/etcd_fixture.h"
#include "node/admin.h"
#include "node/util.h"

#define BOOTSTRAP_TOKEN "bootstrap-token-for-tests-0123456789"
#define VIEWER_TOKEN "viewer-token-for-tests-0123456789"
#define OPERATOR_TOKEN "operator-token-for-tests-0123456789"
#define UPSTREAM_KEY "sk-upstream-secret-abcdWXYZ"

/* ---- the loop-side environment ---- */

typedef struct env {
    const char *endpoint;
    bool with_token_file;
    bool seed_tokens;
    char token_path[128];
    uv_thread_t thread;
    uv_sem_t ready;
    uv_sem_t done;
    int start_rc;
    int port;
    volatile bool draining; /* set by the test thread, read on the loop */
    uv_loop_t loop;
    uv_async_t stop_async;
    curl_uv_t *curl;
    etcd_client_t *etcd;
    config_store_t *store;
    admin_t *admin;
    bool synced;
    int loop_close_rc;
    bool write_done;
    int write_status;
    bool track; /* remember request ids of /admin/v1/ calls (live env) */
    /* node ops stubs */
    volatile int64_t clock_offset_ms;
    char spent_key[64];
    admin_logs_query_t last_logs;
    admin_usage_query_t last_usage;
    volatile int logs_calls, usage_calls;
    uv_timer_t usage_timer;
    admin_answer_cb usage_done;
    void *usage_ctx;
    uv_async_t sweep_async;
    volatile int64_t sweep_at_ms;
    volatile int sweep_rc;
    volatile bool sweep_called;
} env_t;

static etcd_fixture_t etcd_fx;

/* Request ids of the audited calls made so far, and secrets that must never be audited. */
#define MAX_TRACKED 2048
static struct {
    char id[32];
    char method[8];
} tracked[MAX_TRACKED];
static int n_tracked;
static char secrets_seen[64][128];
static int n_secrets;

static void remember_secret(const char *s)
{
    if (s != NULL && n_secrets < 64)
        snprintf(secrets_seen[n_secrets++], sizeof(secrets_seen[0]), "%s", s);
}
static bool use_h2; /* h2c with prior knowledge instead of HTTP/1.1 */

static void on_update(config_store_t *s, const Llmrelay__Snapshot *snap, void *data)
{
    (void)snap;
    env_t *e = data;
    if (config_store_synced(s))
        e->synced = true;
}

static void on_write(config_store_t *s, int status, void *data)
{
    (void)s;
    env_t *e = data;
    e->write_status = status;
    e->write_done = true;
}

static void on_status(void *data, admin_status_t *out)
{
    env_t *e = data;
    out->draining = e->draining;
}

static int64_t real_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t stub_now_ms(void *data)
{
    env_t *e = data;
    return real_now_ms() + e->clock_offset_ms;
}

static bool stub_key_spent(void *data, const char *key_id, int64_t *requests, int64_t *input, int64_t *output,
                           double *usd)
{
    env_t *e = data;
    if (strcmp(key_id, e->spent_key) != 0)
        return false;
    *requests = 3;
    *input = 100;
    *output = 50;
    *usd = 0.25;
    return true;
}

/* Logs: answered from inside the call. A model named "refuse" gets a 400 without a body. */
static void stub_query_logs(void *data, const admin_logs_query_t *q, admin_answer_cb done, void *done_ctx)
{
    env_t *e = data;
    e->last_logs = *q;
    e->logs_calls++;
    if (strcmp(q->model, "refuse") == 0) {
        done(done_ctx, 400, NULL, 0);
        return;
    }
    static const char body[] =
        "{\"records\":[{\"ts\":\"2025-01-31T12:00:00.123Z\",\"request_id\":\"r1\",\"node\":\"n1\",\"key_id\":"
        "\"key_abc\",\"model\":\"gpt-4o\",\"endpoint\":\"chat\",\"provider\":\"oai\",\"status\":200,"
        "\"input_tokens\":10,\"cached_input_tokens\":0,\"output_tokens\":5,\"reasoning_tokens\":0,\"usd\":0.001,"
        "\"latency_ms\":120,\"ttfb_ms\":40,\"stream\":false,\"estimated\":false}],\"next_cursor\":\"c2\"}";
    done(done_ctx, 200, body, sizeof(body) - 1);
}

static void usage_timer_cb(uv_timer_t *t)
{
    env_t *e = t->data;
    static const char body[] = "{\"from\":\"2025-01-30T12:00:00Z\",\"to\":\"2025-01-31T12:00:00Z\",\"totals\":"
                               "{\"requests\":2,\"input_tokens\":20,\"output_tokens\":10,\"usd\":0.002},\"groups\":"
                               "[{\"group\":\"gpt-4o\",\"requests\":2,\"input_tokens\":20,\"output_tokens\":10,"
                               "\"usd\":0.002}]}";
    admin_answer_cb done = e->usage_done;
    e->usage_done = NULL;
    if (done != NULL)
        done(e->usage_ctx, 200, body, sizeof(body) - 1);
}

/* Usage: answered later, from a timer on the loop. */
static void stub_query_usage(void *data, const admin_usage_query_t *q, admin_answer_cb done, void *done_ctx)
{
    env_t *e = data;
    e->last_usage = *q;
    e->usage_calls++;
    e->usage_done = done;
    e->usage_ctx = done_ctx;
    uv_timer_start(&e->usage_timer, usage_timer_cb, 20, 0);
}

static void on_sweep(uv_async_t *h)
{
    env_t *e = h->data;
    e->sweep_rc = admin_audit_sweep(e->admin, e->sweep_at_ms);
    e->sweep_called = true;
}

static void on_stop(uv_async_t *h)
{
    env_t *e = h->data;
    if (e->usage_done != NULL) { /* the node answers whatever is pending when it stops */
        e->usage_done(e->usage_ctx, 503, NULL, 0);
        e->usage_done = NULL;
    }
    uv_close((uv_handle_t *)&e->usage_timer, NULL);
    uv_close((uv_handle_t *)&e->sweep_async, NULL);
    admin_stop(e->admin);
    e->admin = NULL; /* it frees itself: a leak would show */
    config_store_destroy(e->store);
    etcd_client_destroy(e->etcd);
    curl_uv_destroy(e->curl);
    uv_close((uv_handle_t *)h, NULL);
}

static int seed_token(env_t *e, const char *token, const char *name, const char *role)
{
    char hash[65];
    util_sha256_hex(token, strlen(token), hash);
    Llmrelay__AdminToken t = LLMRELAY__ADMIN_TOKEN__INIT;
    t.name = (char *)name;
    t.role = (char *)role;
    t.hash = hash;
    t.created_at = 1;
    e->write_done = false;
    if (config_store_put_token(e->store, &t, on_write, e) != 0)
        return -1;
    if (!fixture_run_until(&e->loop, &e->write_done, 10000) || e->write_status != 0)
        return -1;
    return 0;
}

/* Everything on_stop tears down, when the admin never started. */
static void teardown_early(env_t *e)
{
    if (e->store != NULL)
        config_store_destroy(e->store);
    if (e->etcd != NULL)
        etcd_client_destroy(e->etcd);
    if (e->curl != NULL)
        curl_uv_destroy(e->curl);
    uv_close((uv_handle_t *)&e->stop_async, NULL);
    uv_close((uv_handle_t *)&e->usage_timer, NULL);
    uv_close((uv_handle_t *)&e->sweep_async, NULL);
}

/* The workers' breaker rows: channel 1 of openai-main is open (channel 0 has no row, as a
 * channel never used after a config change). Monotonic clock 1000 s, last change 5 s ago. */
static size_t stub_channels(void *data, channels_row_t *rows, size_t cap, uint64_t *now_mono_ms)
{
    (void)data;
    *now_mono_ms = 1000000;
    if (cap < 1)
        return 0;
    memset(&rows[0], 0, sizeof(rows[0]));
    strcpy(rows[0].provider, "openai-main");
    rows[0].key_index = 1;
    rows[0].state = CHANNELS_OPEN;
    rows[0].failures = 7;
    rows[0].opens = 2;
    rows[0].probes = 1;
    rows[0].not_closed = 2;
    rows[0].last_change_ms = 995000;
    return 1;
}

static size_t stub_channels_bound(void *data)
{
    (void)data;
    return 4;
}

static int loop_setup(env_t *e)
{
    e->curl = curl_uv_create(&e->loop);
    if (e->curl == NULL || etcd_client_create(&e->loop, e->curl, e->endpoint, &e->etcd) != 0 ||
        config_store_create(&e->loop, e->etcd, "/admintest/", NULL, on_update, e, &e->store) != 0)
        return -1;
    if (e->seed_tokens) {
        for (int i = 0; i < 1000 && !config_store_synced(e->store); i++)
            fixture_run_for(&e->loop, 10);
        if (!config_store_synced(e->store) || seed_token(e, VIEWER_TOKEN, "viewer1", "viewer") != 0 ||
            seed_token(e, OPERATOR_TOKEN, "operator1", "operator") != 0) {
            fprintf(stderr, "seeding tokens failed (synced=%d, write status %d)\n", e->synced, e->write_status);
            return -1;
        }
        for (int i = 0; i < 500 && config_store_current(e->store)->n_tokens < 2; i++)
            fixture_run_for(&e->loop, 10);
    } else {
        fixture_run_for(&e->loop, 50);
    }
    llmrelay_config_t cfg = {0};
    cfg.admin_listen = "127.0.0.1:0";
    cfg.admin_token_file = e->with_token_file ? e->token_path : NULL;
    cfg.name = "testnode";
    cfg.etcd_prefix = "/admintest/";
    admin_node_ops_t ops = {.data = e,
                            .now_ms = stub_now_ms,
                            .status = on_status,
                            .key_spent = stub_key_spent,
                            .query_logs = stub_query_logs,
                            .query_usage = stub_query_usage,
                            .etcd = e->etcd,
                            .channels = stub_channels,
                            .channels_bound = stub_channels_bound};
    char err[256];
    int rc = admin_start(&e->loop, &cfg, e->store, &ops, &e->admin, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "admin_start: %s\n", err);
        return rc;
    }
    e->port = admin_port(e->admin);
    return 0;
}

static void loop_thread(void *arg)
{
    env_t *e = arg;
    /* No recycling of socket buffers on this thread: they would outlive it (and hold bodies). */
    if (h2o_socket_buffer_prototype.allocator.cnt == 0)
        h2o_socket_buffer_prototype.allocator.max = 0;
    uv_loop_init(&e->loop);
    uv_async_init(&e->loop, &e->stop_async, on_stop);
    e->stop_async.data = e;
    uv_async_init(&e->loop, &e->sweep_async, on_sweep);
    e->sweep_async.data = e;
    uv_timer_init(&e->loop, &e->usage_timer);
    e->usage_timer.data = e;
    e->start_rc = loop_setup(e);
    uv_sem_post(&e->ready);
    if (e->start_rc == 0)
        uv_run(&e->loop, UV_RUN_DEFAULT); /* until on_stop has closed everything */
    else
        teardown_early(e);
    int rc = fixture_loop_close(&e->loop);
    if (rc != 0)
        fprintf(stderr, "uv_loop_close: %s\n", uv_strerror(rc));
    e->loop_close_rc = rc;
    /* h2o keeps a per-thread cache of request-pool chunks with no public way to empty it:
     * the thread stays parked (never exits) so the cache stays reachable, not leaked. */
    uv_sem_post(&e->done);
    for (;;)
        pause();
}

static int env_start(env_t *e)
{
    if (e->with_token_file) {
        snprintf(e->token_path, sizeof(e->token_path), "/tmp/llmrelay-test-admin-%d.token", (int)getpid());
        FILE *f = fopen(e->token_path, "w");
        if (f == NULL)
            return -1;
        fputs(BOOTSTRAP_TOKEN "\n", f);
        fclose(f);
    }
    uv_sem_init(&e->ready, 0);
    uv_sem_init(&e->done, 0);
    uv_thread_create(&e->thread, loop_thread, e);
    uv_sem_wait(&e->ready);
    uv_sem_destroy(&e->ready);
    if (e->with_token_file)
        unlink(e->token_path);
    return e->start_rc;
}

static void env_stop(env_t *e)
{
    if (e->start_rc == 0)
        uv_async_send(&e->stop_async);
    uv_sem_wait(&e->done);
    uv_sem_destroy(&e->done);
    assert_int_equal(e->loop_close_rc, 0); /* every handle (admin's included) was closed */
}

/* ---- the HTTP side ---- */

typedef struct resp {
    long status;
    char body[1 << 16];
    size_t len;
    char request_id[80];
    char content_type[64];
    yajl_val json;
} resp_t;

static size_t on_body(char *p, size_t size, size_t n, void *data)
{
    resp_t *r = data;
    size_t len = size * n;
    if (r->len + len >= sizeof(r->body))
        len = sizeof(r->body) - 1 - r->len;
    memcpy(r->body + r->len, p, len);
    r->len += len;
    r->body[r->len] = '\0';
    return size * n;
}

static void header_value(const char *line, size_t len, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    if (len <= nl + 1 || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return;
    const char *v = line + nl + 1;
    size_t vl = len - nl - 1;
    while (vl > 0 && *v == ' ')
        v++, vl--;
    while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n'))
        vl--;
    if (vl >= cap)
        vl = cap - 1;
    memcpy(out, v, vl);
    out[vl] = '\0';
}

static size_t on_header(char *p, size_t size, size_t n, void *data)
{
    resp_t *r = data;
    header_value(p, size * n, "x-request-id", r->request_id, sizeof(r->request_id));
    header_value(p, size * n, "content-type", r->content_type, sizeof(r->content_type));
    return size * n;
}

static void resp_free(resp_t *r)
{
    if (r->json != NULL)
        yajl_tree_free(r->json);
    free(r);
}

/* One call; the answer's JSON (if any) is parsed into r->json. */
static resp_t *call(env_t *e, const char *method, const char *path, const char *token, const char *body,
                    size_t body_len, const char *request_id)
{
    resp_t *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    char url[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", e->port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (use_h2)
        curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    struct curl_slist *h = NULL;
    char auth[256];
    if (token != NULL) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
    }
    char rid[128], auto_id[32];
    if (request_id == NULL && e->track && strncmp(path, "/admin/v1", 9) == 0) {
        snprintf(auto_id, sizeof(auto_id), "t-%d-%d", (int)getpid(), n_tracked);
        assert_true(n_tracked < MAX_TRACKED);
        snprintf(tracked[n_tracked].id, sizeof(tracked[n_tracked].id), "%s", auto_id);
        snprintf(tracked[n_tracked].method, sizeof(tracked[n_tracked].method), "%s", method);
        n_tracked++;
        request_id = auto_id;
    }
    if (request_id != NULL) {
        snprintf(rid, sizeof(rid), "x-request-id: %s", request_id);
        h = curl_slist_append(h, rid);
    }
    h = curl_slist_append(h, "Expect:");
    if (body != NULL) {
        h = curl_slist_append(h, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    CURLcode rc = curl_easy_perform(c);
    assert_int_equal(rc, CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    r->json = yajl_tree_parse(r->body, NULL, 0);
    assert_non_null(r->json); /* every answer is JSON */
    assert_string_equal(r->content_type, "application/json");
    assert_true(strlen(r->request_id) > 0);
    return r;
}

static resp_t *get(env_t *e, const char *path, const char *token)
{
    return call(e, "GET", path, token, NULL, 0, NULL);
}

static resp_t *send_json(env_t *e, const char *method, const char *path, const char *token, const char *body)
{
    return call(e, method, path, token, body, strlen(body), NULL);
}

static yajl_val jget(yajl_val v, const char *a, const char *b, const char *c)
{
    const char *path[4] = {a, b, c, NULL};
    return yajl_tree_get(v, path, yajl_t_any);
}

static const char *jstr(yajl_val v, const char *a, const char *b)
{
    yajl_val s = jget(v, a, b, NULL);
    return YAJL_IS_STRING(s) ? s->u.string : NULL;
}

static void expect_error(resp_t *r, long status, const char *code)
{
    if (r->status != status)
        fprintf(stderr, "expected %ld, got %ld: %s\n", status, r->status, r->body);
    assert_int_equal(r->status, status);
    assert_non_null(jstr(r->json, "error", "message"));
    assert_non_null(jstr(r->json, "error", "type"));
    assert_string_equal(jstr(r->json, "error", "code"), code);
}

/* Polls GET path until its status is want (the store's view follows etcd via the watch). */
static resp_t *get_until(env_t *e, const char *path, const char *token, long want)
{
    for (int i = 0; i < 200; i++) {
        resp_t *r = get(e, path, token);
        if (r->status == want)
            return r;
        resp_free(r);
        usleep(20000);
    }
    fail_msg("GET %s never answered %ld", path, want);
    return NULL;
}

static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* ---- tests ---- */

static void test_mask_and_names(void **state)
{
    (void)state;
    char out[16];
    assert_int_equal(admin_mask_secret("sk-abcdefgh1234", out, sizeof(out)), 0);
    assert_string_equal(out, "\xe2\x80\xa6"
                             "1234");
    assert_int_equal(admin_mask_secret("short", out, sizeof(out)), 0);
    assert_string_equal(out, "\xe2\x80\xa6");
    assert_int_equal(admin_mask_secret("", out, sizeof(out)), 0);
    assert_int_equal(admin_mask_secret("12345678901", out, sizeof(out)), 0);
    assert_string_equal(out, "\xe2\x80\xa6");
    assert_int_equal(admin_mask_secret("123456789012", out, sizeof(out)), 0);
    assert_string_equal(out, "\xe2\x80\xa6"
                             "9012");
    assert_int_equal(admin_mask_secret("sk-abcdefgh1234", out, 5), -ENOBUFS);
    assert_true(admin_name_valid("openai-main_1.x", 15));
    assert_false(admin_name_valid("", 0));
    assert_false(admin_name_valid("a/b", 3));
    assert_false(admin_name_valid("a b", 3));
    char long_name[80];
    memset(long_name, 'a', sizeof(long_name));
    assert_false(admin_name_valid(long_name, 65));
    assert_true(admin_name_valid(long_name, 64));
}

static void test_no_token_configured(void **state)
{
    (void)state;
    env_t *e = calloc(1, sizeof(*e));
    char endpoint[64];
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", etcd_fixture_dead_port());
    e->endpoint = endpoint;
    assert_int_equal(env_start(e), 0);

    resp_t *r = get(e, "/healthz", NULL);
    assert_int_equal(r->status, 200);
    assert_string_equal(jstr(r->json, "status", NULL), "ok");
    resp_free(r);

    r = get(e, "/readyz", NULL);
    assert_int_equal(r->status, 503);
    assert_true(YAJL_IS_FALSE(jget(r->json, "ready", NULL, NULL)));
    assert_string_equal(jstr(r->json, "snapshot", NULL), "none");
    assert_string_equal(jstr(r->json, "etcd", NULL), "unreachable");
    resp_free(r);

    r = get(e, "/admin/v1/providers", "anything");
    expect_error(r, 401, "invalid_token");
    assert_non_null(strstr(jstr(r->json, "error", "message"), "no admin token is configured"));
    resp_free(r);

    /* admin_stop closes connections the clients keep open: an idle keep-alive one and one
     * in the middle of its request headers. */
    int idle = raw_connect(e->port), partial = raw_connect(e->port);
    const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(write(idle, req, strlen(req)), (ssize_t)strlen(req));
    char buf[1024];
    ssize_t n = read(idle, buf, sizeof(buf) - 1);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "200 OK"));
    assert_int_equal(write(partial, "GET /hea", 8), 8);
    usleep(50000);
    env_stop(e);
    assert_int_equal(read(idle, buf, sizeof(buf)), 0);
    assert_int_equal(read(partial, buf, sizeof(buf)), 0);
    close(idle);
    close(partial);
    free(e);
}

static env_t *live_env(void)
{
    env_t *e = calloc(1, sizeof(*e));
    e->endpoint = etcd_fx.endpoint;
    e->with_token_file = true;
    e->seed_tokens = true;
    e->track = true;
    assert_int_equal(env_start(e), 0);
    return e;
}

static void test_health_auth_routing(void **state)
{
    env_t *e = *state;
    resp_t *r = get_until(e, "/readyz", NULL, 200);
    assert_true(YAJL_IS_TRUE(jget(r->json, "ready", NULL, NULL)));
    assert_string_equal(jstr(r->json, "snapshot", NULL), "etcd");
    assert_string_equal(jstr(r->json, "etcd", NULL), "ok");
    assert_true(YAJL_IS_FALSE(jget(r->json, "draining", NULL, NULL)));
    assert_true(YAJL_IS_INTEGER(jget(r->json, "revision", NULL, NULL)));
    assert_true(YAJL_GET_INTEGER(jget(r->json, "revision", NULL, NULL)) > 0);
    resp_free(r);

    /* The client's request id is echoed; a sane one only. */
    r = call(e, "GET", "/healthz", NULL, NULL, 0, "my-req-42");
    assert_string_equal(r->request_id, "my-req-42");
    resp_free(r);
    r = call(e, "GET", "/healthz", NULL, NULL, 0, "bad id with spaces");
    assert_string_not_equal(r->request_id, "bad id with spaces");
    resp_free(r);

    r = get(e, "/admin/v1/providers", NULL);
    expect_error(r, 401, "invalid_token");
    resp_free(r);
    r = get(e, "/admin/v1/providers", "wrong-token");
    expect_error(r, 401, "invalid_token");
    resp_free(r);
    r = get(e, "/admin/v1/keys", BOOTSTRAP_TOKEN "x");
    expect_error(r, 401, "invalid_token");
    resp_free(r);

    r = get(e, "/admin/v1/providers", BOOTSTRAP_TOKEN);
    assert_int_equal(r->status, 200);
    assert_true(YAJL_IS_ARRAY(jget(r->json, "providers", NULL, NULL)));
    resp_free(r);
    r = get(e, "/admin/v1/keys", VIEWER_TOKEN);
    assert_int_equal(r->status, 200);
    resp_free(r);

    r = get(e, "/admin/v1/nothing", BOOTSTRAP_TOKEN);
    expect_error(r, 404, "not_found");
    resp_free(r);
    r = get(e, "/elsewhere", NULL);
    expect_error(r, 404, "not_found");
    resp_free(r);
    r = get(e, "/admin/v1/providers/nope", BOOTSTRAP_TOKEN);
    expect_error(r, 404, "not_found");
    resp_free(r);
    r = get(e, "/admin/v1/keys/key_0000000000000000", BOOTSTRAP_TOKEN);
    expect_error(r, 404, "not_found");
    resp_free(r);
    r = send_json(e, "POST", "/admin/v1/providers", BOOTSTRAP_TOKEN, "{}");
    expect_error(r, 405, "method_not_allowed");
    resp_free(r);
    r = send_json(e, "DELETE", "/admin/v1/providers/nope", OPERATOR_TOKEN, "");
    expect_error(r, 404, "not_found");
    resp_free(r);
    r = get(e, "/healthz", NULL);
    resp_free(r);

    /* h2c works too (the Authorization header is left intact there: HPACK may share it). */
    use_h2 = true;
    for (int i = 0; i < 2; i++) {
        r = get(e, "/admin/v1/keys", VIEWER_TOKEN);
        assert_int_equal(r->status, 200);
        resp_free(r);
    }
    r = send_json(e, "POST", "/admin/v1/keys", VIEWER_TOKEN, "{\"name\":\"x\"}");
    expect_error(r, 403, "forbidden");
    resp_free(r);
    use_h2 = false;

    /* Draining: not ready. */
    e->draining = true;
    r = get(e, "/readyz", NULL);
    assert_int_equal(r->status, 503);
    assert_true(YAJL_IS_TRUE(jget(r->json, "draining", NULL, NULL)));
    resp_free(r);
    e->draining = false;
}

static const char *provider_body =
    "{\"type\":\"openai\",\"base_url\":\"https://api.example.com/v1\",\"api_keys\":[\"" UPSTREAM_KEY
    "\",\"sk-second-key-9876\"],\"models\":[\"gpt-4o\",\"gpt-4o-mini\"],\"map\":{\"fast\":\"gpt-4o-mini\"},"
    "\"priority\":2,\"weight\":3,\"region\":\"eu-west\"}";

static void check_provider(yajl_val p)
{
    assert_string_equal(jstr(p, "name", NULL), "openai-main");
    assert_string_equal(jstr(p, "type", NULL), "openai");
    assert_string_equal(jstr(p, "base_url", NULL), "https://api.example.com/v1");
    yajl_val keys = jget(p, "api_keys", NULL, NULL);
    assert_true(YAJL_IS_ARRAY(keys));
    assert_int_equal(keys->u.array.len, 2);
    assert_string_equal(keys->u.array.values[0]->u.string, "\xe2\x80\xa6WXYZ");
    assert_string_equal(keys->u.array.values[1]->u.string, "\xe2\x80\xa6"
                                                           "9876");
    assert_int_equal(jget(p, "models", NULL, NULL)->u.array.len, 2);
    assert_string_equal(jstr(p, "map", "fast"), "gpt-4o-mini");
    assert_int_equal(YAJL_GET_INTEGER(jget(p, "priority", NULL, NULL)), 2);
    assert_int_equal(YAJL_GET_INTEGER(jget(p, "weight", NULL, NULL)), 3);
    assert_string_equal(jstr(p, "region", NULL), "eu-west");
    int64_t t;
    assert_int_equal(util_parse_rfc3339(jstr(p, "updated_at", NULL), &t), 0);
}

static void test_providers(void **state)
{
    env_t *e = *state;
    resp_t *r = send_json(e, "PUT", "/admin/v1/providers/openai-main", OPERATOR_TOKEN, provider_body);
    if (r->status != 200)
        fprintf(stderr, "%s\n", r->body);
    assert_int_equal(r->status, 200);
    check_provider(r->json);
    assert_null(strstr(r->body, "secret-abcd")); /* only the last 4 characters */
    resp_free(r);

    r = get_until(e, "/admin/v1/providers/openai-main", VIEWER_TOKEN, 200);
    check_provider(r->json);
    assert_null(strstr(r->body, UPSTREAM_KEY));
    resp_free(r);

    /* The channels: one row per upstream key, from the workers' rows (none = closed). */
    r = get(e, "/admin/v1/providers/openai-main", VIEWER_TOKEN);
    assert_int_equal(r->status, 200);
    yajl_val chans = jget(r->json, "channels", NULL, NULL);
    assert_true(YAJL_IS_ARRAY(chans));
    assert_int_equal(chans->u.array.len, 2);
    yajl_val c0 = chans->u.array.values[0], c1 = chans->u.array.values[1];
    assert_int_equal(YAJL_GET_INTEGER(jget(c0, "key_index", NULL, NULL)), 0);
    assert_string_equal(jstr(c0, "key", NULL), "\xe2\x80\xa6WXYZ");
    assert_string_equal(jstr(c0, "state", NULL), "closed");
    assert_int_equal(YAJL_GET_INTEGER(jget(c0, "failures", NULL, NULL)), 0);
    assert_int_equal(YAJL_GET_INTEGER(jget(c0, "workers_not_closed", NULL, NULL)), 0);
    assert_true(YAJL_IS_NULL(jget(c0, "last_change", NULL, NULL)));
    assert_int_equal(YAJL_GET_INTEGER(jget(c1, "key_index", NULL, NULL)), 1);
    assert_string_equal(jstr(c1, "state", NULL), "open");
    assert_int_equal(YAJL_GET_INTEGER(jget(c1, "failures", NULL, NULL)), 7);
    assert_int_equal(YAJL_GET_INTEGER(jget(c1, "opens", NULL, NULL)), 2);
    assert_int_equal(YAJL_GET_INTEGER(jget(c1, "probes", NULL, NULL)), 1);
    assert_int_equal(YAJL_GET_INTEGER(jget(c1, "workers_not_closed", NULL, NULL)), 2);
    {
        /* 5 s before the admin's clock, to the second. */
        const char *lc = jstr(c1, "last_change", NULL);
        assert_non_null(lc);
        char whole[32];
        snprintf(whole, sizeof(whole), "%.19sZ", lc);
        int64_t t;
        assert_int_equal(util_parse_rfc3339(whole, &t), 0);
        int64_t now_s = stub_now_ms(e) / 1000;
        assert_true(t >= now_s - 7 && t <= now_s - 4);
    }
    assert_null(strstr(r->body, UPSTREAM_KEY));
    resp_free(r);
    r = get(e, "/admin/v1/providers", VIEWER_TOKEN);
    assert_int_equal(r->status, 200);
    yajl_val listed = jget(r->json, "providers", NULL, NULL)->u.array.values[0];
    assert_int_equal(YAJL_GET_INTEGER(jget(listed, "channel_states", "closed", NULL)), 1);
    assert_int_equal(YAJL_GET_INTEGER(jget(listed, "channel_states", "open", NULL)), 1);
    assert_int_equal(YAJL_GET_INTEGER(jget(listed, "channel_states", "half_open", NULL)), 0);
    resp_free(r);

    r = get(e, "/admin/v1/providers", BOOTSTRAP_TOKEN);
    assert_int_equal(r->status, 200);
    yajl_val list = jget(r->json, "providers", NULL, NULL);
    assert_int_equal(list->u.array.len, 1);
    check_provider(list->u.array.values[0]);
    assert_null(strstr(r->body, "secret"));
    resp_free(r);

    /* Idempotent replace; defaults for priority/weight/region/map. */
    r = send_json(e, "PUT", "/admin/v1/providers/second", BOOTSTRAP_TOKEN,
                  "{\"name\":\"ignored\",\"future_field\":{\"x\":1},\"type\":\"anthropic\","
                  "\"base_url\":\"http://127.0.0.1:1/\",\"api_keys\":[\"k-12345678\"],\"models\":[\"claude\"]}");
    assert_int_equal(r->status, 200);
    assert_string_equal(jstr(r->json, "name", NULL), "second");
    assert_string_equal(jstr(r->json, "base_url", NULL), "http://127.0.0.1:1");
    assert_string_equal(jget(r->json, "api_keys", NULL, NULL)->u.array.values[0]->u.string, "\xe2\x80\xa6");
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "priority", NULL, NULL)), 0);
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "weight", NULL, NULL)), 1);
    assert_true(YAJL_IS_NULL(jget(r->json, "region", NULL, NULL)));
    assert_true(YAJL_IS_OBJECT(jget(r->json, "map", NULL, NULL)));
    resp_free(r);

    /* Viewer may not write. */
    r = send_json(e, "PUT", "/admin/v1/providers/openai-main", VIEWER_TOKEN, provider_body);
    expect_error(r, 403, "forbidden");
    resp_free(r);
    r = send_json(e, "DELETE", "/admin/v1/providers/openai-main", VIEWER_TOKEN, "");
    expect_error(r, 403, "forbidden");
    resp_free(r);

    /* Validation. */
    static const char *bad[] = {
        "",
        "not json",
        "[1,2]",
        "{\"type\":\"openai\"",
        "{\"type\":\"cohere\",\"base_url\":\"https://x\",\"api_keys\":[\"k\"],\"models\":[\"m\"]}",
        "{\"type\":\"openai\",\"base_url\":\"ftp://x\",\"api_keys\":[\"k\"],\"models\":[\"m\"]}",
        "{\"type\":\"openai\",\"base_url\":\"https://x\",\"api_keys\":[],\"models\":[\"m\"]}",
        "{\"type\":\"openai\",\"base_url\":\"https://x\",\"api_keys\":[\"k\"],\"models\":[]}",
        "{\"type\":\"openai\",\"base_url\":\"https://x\",\"api_keys\":[\"k\"],\"models\":[\"m\"],\"weight\":1.5}",
        "{\"type\":\"openai\",\"base_url\":\"https://x\",\"api_keys\":[\"k\"],\"models\":[\"m\"],\"priority\":\"1\"}",
        "{\"type\":\"openai\",\"base_url\":\"https://x\",\"api_keys\":[\"k\"],\"models\":[\"m\"],\"weight\":1000001}",
        "{\"type\":\"openai\",\"base_url\":\"https://"
        "x\",\"api_keys\":[\"k\"],\"models\":[\"m\"],\"priority\":-1000001}",
        "{\"type\":\"openai\",\"base_url\":\"https://x\",\"api_keys\":[\"\"],\"models\":[\"m\"]}",
        "{\"type\":\"openai\",\"base_url\":\"https://x\",\"api_keys\":[\"k\"],\"models\":[\"m\"],\"region\":5}",
        "{\"type\":\"openai\",\"base_url\":\"https://x\",\"api_keys\":[\"k\"],\"models\":[\"m\"],\"map\":[1]}",
        "{\"type\":\"openai\",\"type\":\"openai\",\"base_url\":\"https://x\",\"api_keys\":[\"k\"],\"models\":[\"m\"]}",
        "{\"a\":[[[[[[[[[[[[1]]]]]]]]]]]]}",
        "{\"type\":\"openai\",\"base_url\":\"https://x\",\"api_keys\":[\"k\"],\"models\":[\"m\"]} trailing",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = send_json(e, "PUT", "/admin/v1/providers/openai-main", BOOTSTRAP_TOKEN, bad[i]);
        if (r->status != 400)
            fprintf(stderr, "body %zu: %ld %s\n", i, r->status, r->body);
        expect_error(r, 400, "invalid_request");
        resp_free(r);
    }
    r = send_json(e, "PUT", "/admin/v1/providers/bad%20name", BOOTSTRAP_TOKEN, provider_body);
    expect_error(r, 400, "invalid_request");
    resp_free(r);

    /* Over 1 MiB: 413. */
    size_t big = 1536 * 1024;
    char *body = malloc(big + 1);
    memset(body, ' ', big);
    body[0] = '{';
    body[big - 1] = '}';
    body[big] = '\0';
    r = call(e, "PUT", "/admin/v1/providers/openai-main", BOOTSTRAP_TOKEN, body, big, NULL);
    expect_error(r, 413, "request_too_large");
    resp_free(r);
    free(body);

    /* Delete. */
    r = send_json(e, "DELETE", "/admin/v1/providers/second", OPERATOR_TOKEN, "");
    assert_int_equal(r->status, 200);
    assert_string_equal(jstr(r->json, "deleted", NULL), "second");
    resp_free(r);
    r = get_until(e, "/admin/v1/providers/second", BOOTSTRAP_TOKEN, 404);
    resp_free(r);
    r = send_json(e, "DELETE", "/admin/v1/providers/second", OPERATOR_TOKEN, "");
    expect_error(r, 404, "not_found");
    resp_free(r);
}

static void test_keys(void **state)
{
    env_t *e = *state;
    resp_t *r = send_json(e, "POST", "/admin/v1/keys", OPERATOR_TOKEN,
                          "{\"name\":\"team-a\",\"models\":[\"gpt-4o\"],\"expires\":\"2099-01-02T03:04:05Z\","
                          "\"budget_tokens\":1000000,\"budget_usd\":12.5,\"rpm\":60,\"tpm\":null}");
    if (r->status != 201)
        fprintf(stderr, "%s\n", r->body);
    assert_int_equal(r->status, 201);
    char id[64], secret[128];
    snprintf(id, sizeof(id), "%s", jstr(r->json, "id", NULL));
    snprintf(secret, sizeof(secret), "%s", jstr(r->json, "key", NULL));
    remember_secret(secret);
    assert_int_equal(strncmp(id, "key_", 4), 0);
    assert_int_equal(strlen(id), 20);
    assert_int_equal(strncmp(secret, "sk-lr-", 6), 0);
    assert_int_equal(strlen(secret), 6 + 43);
    assert_string_equal(jstr(r->json, "name", NULL), "team-a");
    assert_string_equal(jstr(r->json, "status", NULL), "active");
    resp_free(r);

    char hash[65];
    util_sha256_hex(secret, strlen(secret), hash);
    char path[128];
    snprintf(path, sizeof(path), "/admin/v1/keys/%s", id);
    r = get_until(e, path, VIEWER_TOKEN, 200);
    assert_string_equal(jstr(r->json, "id", NULL), id);
    assert_string_equal(jstr(r->json, "name", NULL), "team-a");
    assert_string_equal(jstr(r->json, "status", NULL), "active");
    char prefix[11];
    memcpy(prefix, secret, 10);
    prefix[10] = '\0';
    assert_string_equal(jstr(r->json, "prefix", NULL), prefix);
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "limits", "budget_tokens", NULL)), 1000000);
    assert_true(YAJL_GET_DOUBLE(jget(r->json, "limits", "budget_usd", NULL)) == 12.5);
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "limits", "rpm", NULL)), 60);
    assert_true(YAJL_IS_NULL(jget(r->json, "limits", "tpm", NULL)));
    assert_string_equal(jstr(r->json, "limits", "expires"), "2099-01-02T03:04:05Z");
    assert_int_equal(jget(r->json, "limits", "models", NULL)->u.array.len, 1);
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "spent", "requests", NULL)), 0);
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "remaining", "tokens", NULL)), 1000000);
    assert_null(strstr(r->body, secret + 10));
    assert_null(strstr(r->body, hash));
    resp_free(r);

    /* A key without limits: every limit null. */
    r = send_json(e, "POST", "/admin/v1/keys", BOOTSTRAP_TOKEN, "{\"name\":\"plain\"}");
    assert_int_equal(r->status, 201);
    assert_true(YAJL_IS_NULL(jget(r->json, "limits", "budget_usd", NULL)));
    assert_true(YAJL_IS_NULL(jget(r->json, "limits", "models", NULL)));
    assert_true(YAJL_IS_NULL(jget(r->json, "limits", "expires", NULL)));
    assert_true(YAJL_IS_NULL(jget(r->json, "remaining", "usd", NULL)));
    resp_free(r);

    /* Already expired at creation: shown as such. */
    r = send_json(e, "POST", "/admin/v1/keys", BOOTSTRAP_TOKEN,
                  "{\"name\":\"old\",\"expires\":\"2001-01-01T01:00:00+01:00\"}");
    assert_int_equal(r->status, 201);
    assert_string_equal(jstr(r->json, "status", NULL), "expired");
    assert_string_equal(jstr(r->json, "limits", "expires"), "2001-01-01T00:00:00Z");
    resp_free(r);

    for (int i = 0;; i++) { /* all three, oldest first */
        r = get(e, "/admin/v1/keys", BOOTSTRAP_TOKEN);
        if (jget(r->json, "keys", NULL, NULL)->u.array.len == 3)
            break;
        resp_free(r);
        assert_true(i < 200);
        usleep(20000);
    }
    assert_int_equal(r->status, 200);
    yajl_val keys = jget(r->json, "keys", NULL, NULL);
    for (size_t i = 1; i < keys->u.array.len; i++) { /* ordered by created, then id */
        const char *c0 = jstr(keys->u.array.values[i - 1], "created", NULL);
        const char *c1 = jstr(keys->u.array.values[i], "created", NULL);
        assert_true(strcmp(c0, c1) < 0 ||
                    (strcmp(c0, c1) == 0 && strcmp(jstr(keys->u.array.values[i - 1], "id", NULL),
                                                   jstr(keys->u.array.values[i], "id", NULL)) < 0));
    }
    assert_null(strstr(r->body, secret + 10));
    assert_null(strstr(r->body, hash));
    assert_null(strstr(r->body, "\"key\""));
    resp_free(r);

    /* Bad bodies. */
    static const char *bad[] = {
        "{}",
        "{\"name\":\"\"}",
        "{\"name\":\"x\",\"rpm\":0}",
        "{\"name\":\"x\",\"rpm\":1.5}",
        "{\"name\":\"x\",\"budget_usd\":-1}",
        "{\"name\":\"x\",\"budget_tokens\":\"5\"}",
        "{\"name\":\"x\",\"expires\":\"tomorrow\"}",
        "{\"name\":\"x\",\"models\":[]}",
        "{\"name\":\"x\",\"models\":\"gpt\"}",
        "{\"name\":\"x\",\"name\":\"y\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = send_json(e, "POST", "/admin/v1/keys", BOOTSTRAP_TOKEN, bad[i]);
        if (r->status != 400)
            fprintf(stderr, "body %zu: %ld %s\n", i, r->status, r->body);
        expect_error(r, 400, "invalid_request");
        resp_free(r);
    }
    r = send_json(e, "POST", "/admin/v1/keys", VIEWER_TOKEN, "{\"name\":\"x\"}");
    expect_error(r, 403, "forbidden");
    resp_free(r);

    /* Revoke. */
    char rpath[160];
    snprintf(rpath, sizeof(rpath), "/admin/v1/keys/%s/revoke", id);
    r = send_json(e, "POST", rpath, VIEWER_TOKEN, "");
    expect_error(r, 403, "forbidden");
    resp_free(r);
    r = get(e, rpath, BOOTSTRAP_TOKEN);
    expect_error(r, 405, "method_not_allowed");
    resp_free(r);
    r = send_json(e, "POST", "/admin/v1/keys/key_ffffffffffffffff/revoke", BOOTSTRAP_TOKEN, "");
    expect_error(r, 404, "not_found");
    resp_free(r);
    r = send_json(e, "POST", rpath, OPERATOR_TOKEN, "");
    assert_int_equal(r->status, 200);
    assert_string_equal(jstr(r->json, "status", NULL), "revoked");
    assert_non_null(jstr(r->json, "revoked", NULL));
    resp_free(r);
    for (int i = 0; i < 200; i++) {
        r = get(e, path, BOOTSTRAP_TOKEN);
        bool done = strcmp(jstr(r->json, "status", NULL), "revoked") == 0;
        resp_free(r);
        if (done)
            break;
        assert_true(i < 199);
        usleep(20000);
    }
    r = send_json(e, "POST", rpath, OPERATOR_TOKEN, "");
    assert_int_equal(r->status, 200);
    assert_string_equal(jstr(r->json, "status", NULL), "revoked");
    resp_free(r);
}

/* ---- reading etcd directly (JSON gateway), from the test thread ---- */

typedef struct kv {
    char key[512];
    uint8_t value[4096];
    size_t value_len;
} kv_t;

static void b64(const uint8_t *in, size_t len, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v =
            (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
        out[o++] = i + 1 < len ? tbl[v >> 6 & 63] : '=';
        out[o++] = i + 2 < len ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
}

/* Every key under prefix (at most max), with values. Returns the count. */
static size_t etcd_read_prefix(const char *prefix, kv_t *out, size_t max)
{
    char kb[512], eb[512], body[1200];
    uint8_t end[256];
    size_t plen = strlen(prefix);
    memcpy(end, prefix, plen);
    end[plen - 1]++;
    b64((const uint8_t *)prefix, plen, kb);
    b64(end, plen, eb);
    snprintf(body, sizeof(body), "{\"key\":\"%s\",\"range_end\":\"%s\"}", kb, eb);
    resp_t *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    char *big = malloc(8 << 20);
    assert_non_null(big);
    size_t big_len = 0;
    CURL *c = curl_easy_init();
    char url[128];
    snprintf(url, sizeof(url), "%s/v3/kv/range", etcd_fx.endpoint);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    FILE *f = fmemopen(big, (8 << 20) - 1, "w");
    curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_cleanup(c);
    big_len = (size_t)ftell(f);
    fclose(f);
    big[big_len] = '\0';
    yajl_val root = yajl_tree_parse(big, NULL, 0);
    assert_non_null(root);
    yajl_val kvs = jget(root, "kvs", NULL, NULL);
    size_t n = 0;
    for (size_t i = 0; kvs != NULL && i < kvs->u.array.len && n < max; i++) {
        const char *k = jstr(kvs->u.array.values[i], "key", NULL);
        const char *v = jstr(kvs->u.array.values[i], "value", NULL);
        size_t kl;
        assert_int_equal(util_base64_decode(k, strlen(k), (uint8_t *)out[n].key, sizeof(out[n].key) - 1, &kl), 0);
        out[n].key[kl] = '\0';
        out[n].value_len = 0;
        if (v != NULL)
            assert_int_equal(util_base64_decode(v, strlen(v), out[n].value, sizeof(out[n].value), &out[n].value_len),
                             0);
        n++;
    }
    yajl_tree_free(root);
    free(big);
    free(r);
    return n;
}

/* ---- pure helpers ---- */

static void test_ip_and_time_helpers(void **state)
{
    (void)state;
    char out[64];
    struct sockaddr_in sin = {.sin_family = AF_INET};
    inet_pton(AF_INET, "192.0.2.77", &sin.sin_addr);
    assert_int_equal(admin_ip_truncate((struct sockaddr *)&sin, out, sizeof(out)), 0);
    assert_string_equal(out, "192.0.2.0/24");
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "2001:db8:abcd:1234:5678::1", &sin6.sin6_addr);
    assert_int_equal(admin_ip_truncate((struct sockaddr *)&sin6, out, sizeof(out)), 0);
    assert_string_equal(out, "2001:db8:abcd::/48");
    inet_pton(AF_INET6, "::ffff:10.1.2.3", &sin6.sin6_addr);
    assert_int_equal(admin_ip_truncate((struct sockaddr *)&sin6, out, sizeof(out)), 0);
    assert_string_equal(out, "10.1.2.0/24");
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    assert_int_equal(admin_ip_truncate(&unspec, out, sizeof(out)), 0);
    assert_string_equal(out, "-");
    assert_int_equal(admin_ip_truncate((struct sockaddr *)&sin, out, 5), -ENOBUFS);

    int64_t ms;
    assert_int_equal(admin_parse_duration("500ms", &ms), 0);
    assert_int_equal(ms, 500);
    assert_int_equal(admin_parse_duration("30s", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(admin_parse_duration("15m", &ms), 0);
    assert_int_equal(ms, 900000);
    assert_int_equal(admin_parse_duration("24h", &ms), 0);
    assert_int_equal(ms, 86400000);
    assert_int_equal(admin_parse_duration("7d", &ms), 0);
    assert_int_equal(ms, 604800000);
    static const char *bad[] = {"", "h", "5", "5x", "-5s", "1.5h", "5 s", "99999999999999d", NULL};
    for (int i = 0; bad[i] != NULL; i++)
        assert_int_equal(admin_parse_duration(bad[i], &ms), -EINVAL);
    assert_int_equal(admin_parse_time_arg("1h", 10000000, &ms), 0);
    assert_int_equal(ms, 10000000 - 3600000);
    assert_int_equal(admin_parse_time_arg("2025-01-31T12:00:00+01:00", 0, &ms), 0);
    assert_int_equal(ms, 1738321200000LL);
    assert_int_equal(admin_parse_time_arg("yesterday", 0, &ms), -EINVAL);

    assert_true(admin_model_valid("gpt-4o", 6));
    assert_true(admin_model_valid("llama3:8b@q4+x", 14));
    assert_false(admin_model_valid("a/b", 3));
    assert_false(admin_model_valid("", 0));
}

/* ---- prices ---- */

static void test_prices(void **state)
{
    env_t *e = *state;
    const char *body = "{\"input\":2.5,\"output\":10,\"cached_input\":1.25}";
    resp_t *r = send_json(e, "PUT", "/admin/v1/prices/gpt-4o", OPERATOR_TOKEN, body);
    expect_error(r, 403, "forbidden");
    resp_free(r);
    r = send_json(e, "PUT", "/admin/v1/prices/gpt-4o", VIEWER_TOKEN, body);
    expect_error(r, 403, "forbidden");
    resp_free(r);
    r = send_json(e, "PUT", "/admin/v1/prices/gpt-4o", BOOTSTRAP_TOKEN, body);
    if (r->status != 200)
        fprintf(stderr, "%s\n", r->body);
    assert_int_equal(r->status, 200);
    assert_string_equal(jstr(r->json, "model", NULL), "gpt-4o");
    assert_true(YAJL_GET_DOUBLE(jget(r->json, "input", NULL, NULL)) == 2.5);
    assert_true(YAJL_GET_DOUBLE(jget(r->json, "output", NULL, NULL)) == 10);
    assert_true(YAJL_GET_DOUBLE(jget(r->json, "cached_input", NULL, NULL)) == 1.25);
    assert_true(YAJL_IS_NULL(jget(r->json, "reasoning", NULL, NULL)));
    assert_non_null(jstr(r->json, "updated_at", NULL));
    resp_free(r);
    r = send_json(e, "PUT", "/admin/v1/prices/claude:sonnet", BOOTSTRAP_TOKEN,
                  "{\"input\":3,\"output\":15,\"reasoning\":15,\"future\":1}");
    assert_int_equal(r->status, 200);
    resp_free(r);

    /* Stored as a Price record under config/prices/<model>. */
    kv_t *kvs = calloc(16, sizeof(*kvs));
    size_t n = etcd_read_prefix("/admintest/config/prices/", kvs, 16);
    assert_int_equal(n, 2);
    assert_string_equal(kvs[1].key, "/admintest/config/prices/gpt-4o");
    Llmrelay__Price *p = llmrelay__price__unpack(NULL, kvs[1].value_len, kvs[1].value);
    assert_non_null(p);
    assert_string_equal(p->model, "gpt-4o");
    assert_true(p->input_per_mtok == 2.5 && p->output_per_mtok == 10 && p->has_cached_input &&
                p->cached_input_per_mtok == 1.25 && !p->has_reasoning);
    llmrelay__price__free_unpacked(p, NULL);
    free(kvs);

    r = get(e, "/admin/v1/prices", VIEWER_TOKEN);
    assert_int_equal(r->status, 200);
    yajl_val list = jget(r->json, "prices", NULL, NULL);
    assert_int_equal(list->u.array.len, 2);
    assert_string_equal(jstr(list->u.array.values[0], "model", NULL), "claude:sonnet");
    assert_true(YAJL_GET_DOUBLE(jget(list->u.array.values[0], "reasoning", NULL, NULL)) == 15);
    resp_free(r);
    r = get(e, "/admin/v1/prices/gpt-4o", OPERATOR_TOKEN);
    assert_int_equal(r->status, 200);
    assert_true(YAJL_GET_DOUBLE(jget(r->json, "input", NULL, NULL)) == 2.5);
    resp_free(r);
    r = get(e, "/admin/v1/prices/nothing", VIEWER_TOKEN);
    expect_error(r, 404, "not_found");
    resp_free(r);

    static const char *bad[] = {
        "{}",
        "{\"input\":1}",
        "{\"input\":-1,\"output\":1}",
        "{\"input\":\"1\",\"output\":1}",
        "{\"input\":1,\"output\":1,\"cached_input\":\"x\"}",
        "{\"input\":1,\"output\":1e9}",
        "{\"input\":1,\"input\":2,\"output\":1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = send_json(e, "PUT", "/admin/v1/prices/gpt-4o", BOOTSTRAP_TOKEN, bad[i]);
        if (r->status != 400)
            fprintf(stderr, "price body %zu: %ld %s\n", i, r->status, r->body);
        expect_error(r, 400, "invalid_request");
        resp_free(r);
    }
    r = send_json(e, "PUT", "/admin/v1/prices/bad%20model", BOOTSTRAP_TOKEN, body);
    expect_error(r, 400, "invalid_request");
    resp_free(r);
    r = send_json(e, "POST", "/admin/v1/prices", BOOTSTRAP_TOKEN, body);
    expect_error(r, 405, "method_not_allowed");
    resp_free(r);

    r = send_json(e, "DELETE", "/admin/v1/prices/claude:sonnet", OPERATOR_TOKEN, "");
    expect_error(r, 403, "forbidden");
    resp_free(r);
    r = send_json(e, "DELETE", "/admin/v1/prices/claude:sonnet", BOOTSTRAP_TOKEN, "");
    assert_int_equal(r->status, 200);
    assert_string_equal(jstr(r->json, "deleted", NULL), "claude:sonnet");
    resp_free(r);
    r = send_json(e, "DELETE", "/admin/v1/prices/claude:sonnet", BOOTSTRAP_TOKEN, "");
    expect_error(r, 404, "not_found");
    resp_free(r);
    r = get(e, "/admin/v1/prices/claude:sonnet", BOOTSTRAP_TOKEN);
    expect_error(r, 404, "not_found");
    resp_free(r);
}

/* ---- admin tokens and roles ---- */

static void test_tokens_and_roles(void **state)
{
    env_t *e = *state;
    resp_t *r = send_json(e, "POST", "/admin/v1/tokens", OPERATOR_TOKEN, "{\"name\":\"ci\",\"role\":\"viewer\"}");
    expect_error(r, 403, "forbidden");
    resp_free(r);
    r = send_json(e, "POST", "/admin/v1/tokens", VIEWER_TOKEN, "{\"name\":\"ci\",\"role\":\"viewer\"}");
    expect_error(r, 403, "forbidden");
    resp_free(r);

    char op_token[128], ci_token[128];
    r = send_json(e, "POST", "/admin/v1/tokens", BOOTSTRAP_TOKEN, "{\"name\":\"ops2\",\"role\":\"operator\"}");
    if (r->status != 201)
        fprintf(stderr, "%s\n", r->body);
    assert_int_equal(r->status, 201);
    assert_string_equal(jstr(r->json, "name", NULL), "ops2");
    assert_string_equal(jstr(r->json, "role", NULL), "operator");
    assert_non_null(jstr(r->json, "created", NULL));
    snprintf(op_token, sizeof(op_token), "%s", jstr(r->json, "token", NULL));
    assert_int_equal(strncmp(op_token, "lrt-", 4), 0);
    remember_secret(op_token);
    resp_free(r);
    r = send_json(e, "POST", "/admin/v1/tokens", BOOTSTRAP_TOKEN, "{\"name\":\"ci\",\"role\":\"viewer\"}");
    assert_int_equal(r->status, 201);
    snprintf(ci_token, sizeof(ci_token), "%s", jstr(r->json, "token", NULL));
    remember_secret(ci_token);
    resp_free(r);

    /* Only the SHA-256 is stored. */
    char hash[65];
    util_sha256_hex(op_token, strlen(op_token), hash);
    kv_t *kvs = calloc(16, sizeof(*kvs));
    size_t n = etcd_read_prefix("/admintest/config/tokens/", kvs, 16);
    bool found = false;
    for (size_t i = 0; i < n; i++) {
        assert_null(memmem(kvs[i].value, kvs[i].value_len, op_token, strlen(op_token)));
        if (strstr(kvs[i].key, hash) != NULL)
            found = true;
    }
    assert_true(found);
    free(kvs);

    /* The new operator token works once the snapshot has it, and may not create tokens. */
    r = get_until(e, "/admin/v1/keys", op_token, 200);
    resp_free(r);
    r = send_json(e, "POST", "/admin/v1/tokens", op_token, "{\"name\":\"x\",\"role\":\"admin\"}");
    expect_error(r, 403, "forbidden");
    resp_free(r);
    r = send_json(e, "POST", "/admin/v1/keys", op_token, "{\"name\":\"by-ops2\"}");
    assert_int_equal(r->status, 201);
    remember_secret(jstr(r->json, "key", NULL));
    resp_free(r);
    /* A viewer made through the API: reads work, every write is refused. */
    r = get_until(e, "/admin/v1/providers", ci_token, 200);
    resp_free(r);
    static const struct {
        const char *method, *path, *body;
    } writes[] = {
        {"PUT", "/admin/v1/providers/p1", "{}"},
        {"DELETE", "/admin/v1/providers/p1", ""},
        {"POST", "/admin/v1/keys", "{\"name\":\"x\"}"},
        {"POST", "/admin/v1/keys/key_0123/revoke", ""},
        {"POST", "/admin/v1/keys/key_0123/rotate", ""},
        {"PUT", "/admin/v1/prices/m", "{\"input\":1,\"output\":1}"},
        {"DELETE", "/admin/v1/prices/m", ""},
        {"POST", "/admin/v1/tokens", "{\"name\":\"y\",\"role\":\"admin\"}"},
        {"DELETE", "/admin/v1/tokens/ci", ""},
    };
    for (size_t i = 0; i < sizeof(writes) / sizeof(writes[0]); i++) {
        r = send_json(e, writes[i].method, writes[i].path, ci_token, writes[i].body);
        if (r->status != 403)
            fprintf(stderr, "viewer %s %s: %ld\n", writes[i].method, writes[i].path, r->status);
        expect_error(r, 403, "forbidden");
        resp_free(r);
    }
    /* The operator: the audit log is not for it. */
    r = get(e, "/admin/v1/audit", OPERATOR_TOKEN);
    expect_error(r, 403, "forbidden");
    resp_free(r);

    r = get(e, "/admin/v1/tokens", VIEWER_TOKEN);
    assert_int_equal(r->status, 200);
    yajl_val list = jget(r->json, "tokens", NULL, NULL);
    assert_true(YAJL_IS_ARRAY(list));
    assert_int_equal(list->u.array.len, 4); /* ci, operator1, ops2, viewer1 */
    assert_string_equal(jstr(list->u.array.values[0], "name", NULL), "ci");
    assert_string_equal(jstr(list->u.array.values[0], "role", NULL), "viewer");
    assert_null(strstr(r->body, hash));
    assert_null(strstr(r->body, op_token));
    assert_null(strstr(r->body, "\"token\""));
    assert_null(strstr(r->body, "hash"));
    resp_free(r);

    r = send_json(e, "POST", "/admin/v1/tokens", BOOTSTRAP_TOKEN, "{\"name\":\"ci\",\"role\":\"admin\"}");
    expect_error(r, 409, "conflict");
    resp_free(r);
    static const char *bad[] = {"{}", "{\"name\":\"a b\",\"role\":\"admin\"}", "{\"name\":\"z\",\"role\":\"root\"}",
                                "{\"name\":\"z\"}", "[]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = send_json(e, "POST", "/admin/v1/tokens", BOOTSTRAP_TOKEN, bad[i]);
        expect_error(r, 400, "invalid_request");
        resp_free(r);
    }

    r = send_json(e, "DELETE", "/admin/v1/tokens/ops2", OPERATOR_TOKEN, "");
    expect_error(r, 403, "forbidden");
    resp_free(r);
    r = send_json(e, "DELETE", "/admin/v1/tokens/ops2", BOOTSTRAP_TOKEN, "");
    assert_int_equal(r->status, 200);
    assert_string_equal(jstr(r->json, "deleted", NULL), "ops2");
    resp_free(r);
    r = get_until(e, "/admin/v1/keys", op_token, 401);
    resp_free(r);
    r = send_json(e, "DELETE", "/admin/v1/tokens/ops2", BOOTSTRAP_TOKEN, "");
    expect_error(r, 404, "not_found");
    resp_free(r);
    r = get(e, "/admin/v1/tokens/ci", BOOTSTRAP_TOKEN);
    expect_error(r, 405, "method_not_allowed");
    resp_free(r);
}

/* ---- rotation, spending ---- */

static Llmrelay__ApiKey *stored_key(const char *hash)
{
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "/admintest/config/keys/%s", hash);
    kv_t *kv = calloc(1, sizeof(*kv));
    Llmrelay__ApiKey *k = NULL;
    if (etcd_read_prefix(prefix, kv, 1) == 1)
        k = llmrelay__api_key__unpack(NULL, kv->value_len, kv->value);
    free(kv);
    return k;
}

static void test_rotate_and_spent(void **state)
{
    env_t *e = *state;
    resp_t *r = send_json(e, "POST", "/admin/v1/keys", OPERATOR_TOKEN,
                          "{\"name\":\"rot\",\"budget_tokens\":1000,\"budget_usd\":1,\"rpm\":5}");
    assert_int_equal(r->status, 201);
    char id[64], old_secret[128], new_secret[128], path[160], rpath[160];
    snprintf(id, sizeof(id), "%s", jstr(r->json, "id", NULL));
    snprintf(old_secret, sizeof(old_secret), "%s", jstr(r->json, "key", NULL));
    remember_secret(old_secret);
    resp_free(r);
    snprintf(path, sizeof(path), "/admin/v1/keys/%s", id);
    snprintf(rpath, sizeof(rpath), "/admin/v1/keys/%s/rotate", id);

    /* Spending comes from the node; remaining follows. */
    snprintf(e->spent_key, sizeof(e->spent_key), "%s", id);
    r = get_until(e, path, VIEWER_TOKEN, 200);
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "spent", "requests", NULL)), 3);
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "spent", "input_tokens", NULL)), 100);
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "spent", "output_tokens", NULL)), 50);
    assert_true(YAJL_GET_DOUBLE(jget(r->json, "spent", "usd", NULL)) == 0.25);
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "remaining", "tokens", NULL)), 850);
    assert_true(YAJL_GET_DOUBLE(jget(r->json, "remaining", "usd", NULL)) == 0.75);
    assert_true(YAJL_IS_NULL(jget(r->json, "previous_key_valid_until", NULL, NULL)));
    resp_free(r);

    r = send_json(e, "POST", rpath, VIEWER_TOKEN, "{\"grace\":\"1h\"}");
    expect_error(r, 403, "forbidden");
    resp_free(r);
    r = send_json(e, "POST", rpath, OPERATOR_TOKEN, "{\"grace\":\"soon\"}");
    expect_error(r, 400, "invalid_request");
    resp_free(r);
    r = send_json(e, "POST", rpath, OPERATOR_TOKEN, "{\"grace\":\"31d\"}");
    expect_error(r, 400, "invalid_request");
    resp_free(r);
    r = send_json(e, "POST", "/admin/v1/keys/key_ffffffffffffffff/rotate", OPERATOR_TOKEN, "");
    expect_error(r, 404, "not_found");
    resp_free(r);

    int64_t before = real_now_ms() / 1000;
    r = send_json(e, "POST", rpath, OPERATOR_TOKEN, "{\"grace\":\"1h\"}");
    if (r->status != 200)
        fprintf(stderr, "%s\n", r->body);
    assert_int_equal(r->status, 200);
    assert_string_equal(jstr(r->json, "id", NULL), id);
    snprintf(new_secret, sizeof(new_secret), "%s", jstr(r->json, "key", NULL));
    remember_secret(new_secret);
    assert_int_equal(strncmp(new_secret, "sk-lr-", 6), 0);
    assert_string_not_equal(new_secret, old_secret);
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "limits", "rpm", NULL)), 5);
    resp_free(r);
    int64_t after = real_now_ms() / 1000;

    char old_hash[65], new_hash[65];
    util_sha256_hex(old_secret, strlen(old_secret), old_hash);
    util_sha256_hex(new_secret, strlen(new_secret), new_hash);
    Llmrelay__ApiKey *fresh = stored_key(new_hash), *old = stored_key(old_hash);
    assert_non_null(fresh);
    assert_non_null(old);
    assert_string_equal(fresh->id, id);
    assert_string_equal(fresh->hash, new_hash);
    assert_string_equal(fresh->status, "active");
    assert_int_equal(fresh->grace_until, 0);
    assert_int_equal(fresh->rpm, 5);
    assert_true(fresh->has_budget_tokens && fresh->budget_tokens == 1000);
    assert_int_equal(strncmp(fresh->prefix, new_secret, 10), 0);
    assert_string_equal(old->id, id);
    assert_string_equal(old->status, "active");
    assert_true(old->grace_until >= before + 3600 && old->grace_until <= after + 3600);
    llmrelay__api_key__free_unpacked(fresh, NULL);
    llmrelay__api_key__free_unpacked(old, NULL);

    /* One key in the list; show names the grace of the old secret. */
    for (int i = 0;; i++) {
        r = get(e, path, BOOTSTRAP_TOKEN);
        if (jstr(r->json, "previous_key_valid_until", NULL) != NULL &&
            strncmp(jstr(r->json, "prefix", NULL), new_secret, 10) == 0)
            break;
        resp_free(r);
        assert_true(i < 200);
        usleep(20000);
    }
    resp_free(r);
    r = get(e, "/admin/v1/keys", BOOTSTRAP_TOKEN);
    yajl_val keys = jget(r->json, "keys", NULL, NULL);
    int seen = 0;
    for (size_t i = 0; i < keys->u.array.len; i++)
        seen += strcmp(jstr(keys->u.array.values[i], "id", NULL), id) == 0;
    assert_int_equal(seen, 1);
    resp_free(r);

    /* Revoking revokes every secret of the key, the one in grace included. */
    char vpath[160];
    snprintf(vpath, sizeof(vpath), "/admin/v1/keys/%s/revoke", id);
    r = send_json(e, "POST", vpath, OPERATOR_TOKEN, "");
    assert_int_equal(r->status, 200);
    assert_string_equal(jstr(r->json, "status", NULL), "revoked");
    resp_free(r);
    fresh = stored_key(new_hash);
    old = stored_key(old_hash);
    assert_string_equal(fresh->status, "revoked");
    assert_string_equal(old->status, "revoked");
    llmrelay__api_key__free_unpacked(fresh, NULL);
    llmrelay__api_key__free_unpacked(old, NULL);
    for (int i = 0;; i++) {
        r = get(e, path, BOOTSTRAP_TOKEN);
        bool done = strcmp(jstr(r->json, "status", NULL), "revoked") == 0;
        resp_free(r);
        if (done)
            break;
        assert_true(i < 200);
        usleep(20000);
    }
    r = send_json(e, "POST", rpath, OPERATOR_TOKEN, "");
    expect_error(r, 409, "conflict");
    resp_free(r);
    e->spent_key[0] = '\0';
}

/* ---- logs and usage: through the node's ops ---- */

static void test_logs_and_usage(void **state)
{
    env_t *e = *state;
    int calls = e->logs_calls;
    resp_t *r = get(e, "/admin/v1/logs?key=key_abc&since=2h&status=4xx&model=gpt-4o%2Bx&limit=5&cursor=c1&unknown=1",
                    VIEWER_TOKEN);
    if (r->status != 200)
        fprintf(stderr, "%s\n", r->body);
    assert_int_equal(r->status, 200);
    assert_int_equal(e->logs_calls, calls + 1);
    assert_string_equal(e->last_logs.key_id, "key_abc");
    assert_string_equal(e->last_logs.model, "gpt-4o+x");
    assert_int_equal(e->last_logs.status_class, 4);
    assert_int_equal(e->last_logs.status, 0);
    assert_int_equal(e->last_logs.limit, 5);
    assert_string_equal(e->last_logs.cursor, "c1");
    int64_t span = e->last_logs.until_ms - e->last_logs.since_ms;
    assert_true(span >= 7200000 - 50 && span <= 7200000 + 50);
    assert_string_equal(jstr(r->json, "next_cursor", NULL), "c2");
    yajl_val recs = jget(r->json, "records", NULL, NULL);
    assert_int_equal(recs->u.array.len, 1);
    assert_string_equal(jstr(recs->u.array.values[0], "request_id", NULL), "r1");
    resp_free(r);

    r = get(e, "/admin/v1/logs?status=429&since=2025-01-01T00:00:00Z&until=2025-01-02T00:00:00Z", OPERATOR_TOKEN);
    assert_int_equal(r->status, 200);
    assert_int_equal(e->last_logs.status, 429);
    assert_int_equal(e->last_logs.limit, 100);
    assert_int_equal(e->last_logs.since_ms, 1735689600000LL);
    assert_int_equal(e->last_logs.until_ms, 1735776000000LL);
    assert_string_equal(e->last_logs.key_id, "");
    resp_free(r);

    static const char *bad[] = {
        "/admin/v1/logs?status=abc",  "/admin/v1/logs?status=4x",         "/admin/v1/logs?key=sk-lr-secret",
        "/admin/v1/logs?since=soon",  "/admin/v1/logs?limit=0",           "/admin/v1/logs?limit=1001",
        "/admin/v1/logs?key=a&key=b", "/admin/v1/logs?since=1h&until=2h", "/admin/v1/logs?cursor=a%2Fb",
        "/admin/v1/logs?model=%01",   "/admin/v1/usage?by=day",           "/admin/v1/usage?since=x",
    };
    calls = e->logs_calls;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = get(e, bad[i], BOOTSTRAP_TOKEN);
        if (r->status != 400)
            fprintf(stderr, "%s: %ld\n", bad[i], r->status);
        expect_error(r, 400, "invalid_request");
        resp_free(r);
    }
    assert_int_equal(e->logs_calls, calls); /* refused before the node was asked */
    r = get(e, "/admin/v1/logs?model=refuse", BOOTSTRAP_TOKEN);
    expect_error(r, 400, "invalid_request");
    resp_free(r);
    r = send_json(e, "POST", "/admin/v1/logs", BOOTSTRAP_TOKEN, "{}");
    expect_error(r, 405, "method_not_allowed");
    resp_free(r);

    r = get(e, "/admin/v1/usage?key=key_abc&since=7d&by=model", VIEWER_TOKEN);
    assert_int_equal(r->status, 200);
    assert_int_equal(e->last_usage.by, ADMIN_USAGE_BY_MODEL);
    assert_string_equal(e->last_usage.key_id, "key_abc");
    span = e->last_usage.until_ms - e->last_usage.since_ms;
    assert_true(span >= 604800000 - 50 && span <= 604800000 + 50);
    assert_int_equal(YAJL_GET_INTEGER(jget(r->json, "totals", "requests", NULL)), 2);
    assert_string_equal(jstr(jget(r->json, "groups", NULL, NULL)->u.array.values[0], "group", NULL), "gpt-4o");
    resp_free(r);
    static const char *const bys[] = {"hour", "node", "key"};
    for (int i = 0; i < 3; i++) {
        char p[64];
        snprintf(p, sizeof(p), "/admin/v1/usage?by=%s", bys[i]);
        r = get(e, p, OPERATOR_TOKEN);
        assert_int_equal(r->status, 200);
        assert_int_equal(e->last_usage.by, ADMIN_USAGE_BY_HOUR + i);
        resp_free(r);
    }
    r = get(e, "/admin/v1/usage", OPERATOR_TOKEN);
    assert_int_equal(r->status, 200);
    assert_int_equal(e->last_usage.by, ADMIN_USAGE_BY_NONE);
    resp_free(r);
}

/* ---- audit ---- */

static bool audit_has(const kv_t *kvs, size_t n, const char *request_id, Llmrelay__AuditEntry **out)
{
    for (size_t i = 0; i < n; i++) {
        Llmrelay__AuditEntry *a = llmrelay__audit_entry__unpack(NULL, kvs[i].value_len, kvs[i].value);
        if (a != NULL && strcmp(a->request_id, request_id) == 0) {
            if (out != NULL)
                *out = a;
            else
                llmrelay__audit_entry__free_unpacked(a, NULL);
            return true;
        }
        if (a != NULL)
            llmrelay__audit_entry__free_unpacked(a, NULL);
    }
    return false;
}

static void test_audit(void **state)
{
    env_t *e = *state;
    /* A few calls whose entries are checked in detail. */
    resp_t *r = call(e, "GET", "/admin/v1/keys/key_0123456789abcdef", VIEWER_TOKEN, NULL, 0, "audit-get-key");
    expect_error(r, 404, "not_found");
    resp_free(r);
    r = call(e, "GET", "/admin/v1/logs?key=key_77", OPERATOR_TOKEN, NULL, 0, "audit-logs");
    assert_int_equal(r->status, 200);
    resp_free(r);
    r = call(e, "GET", "/admin/v1/providers", "not-a-token", NULL, 0, "audit-401");
    expect_error(r, 401, "invalid_token");
    resp_free(r);
    r = call(e, "GET", "/admin/v1/keys/sk-lr-looks-like-a-secret", BOOTSTRAP_TOKEN, NULL, 0, "audit-secret-path");
    expect_error(r, 404, "not_found");
    resp_free(r);

    /* The entries reach etcd asynchronously: wait for all of them. */
    kv_t *kvs = calloc(4096, sizeof(*kvs));
    size_t n = 0;
    for (int tries = 0;; tries++) {
        n = etcd_read_prefix("/admintest/audit/", kvs, 4096);
        int missing = 0;
        for (int i = 0; i < n_tracked; i++)
            if (!audit_has(kvs, n, tracked[i].id, NULL))
                missing++;
        static const char *const mine[] = {"audit-get-key", "audit-logs", "audit-401", "audit-secret-path"};
        for (int i = 0; i < 4; i++)
            if (!audit_has(kvs, n, mine[i], NULL))
                missing++;
        if (missing == 0)
            break;
        if (tries >= 300)
            fail_msg("%d audited calls have no entry in etcd (%zu entries, %d tracked)", missing, n, n_tracked);
        usleep(20000);
    }
    assert_true(n_tracked > 50);

    /* Keys: audit/<13-digit ms>-<node>-<seq>. No secret anywhere, IPs truncated. */
    for (size_t i = 0; i < n; i++) {
        const char *k = kvs[i].key + strlen("/admintest/audit/");
        assert_int_equal(strncmp(kvs[i].key, "/admintest/audit/", 17), 0);
        for (int d = 0; d < 13; d++)
            assert_true(k[d] >= '0' && k[d] <= '9');
        assert_int_equal(strncmp(k + 13, "-testnode-", 10), 0);
        static const char *const never[] = {BOOTSTRAP_TOKEN, VIEWER_TOKEN, OPERATOR_TOKEN, UPSTREAM_KEY, "sk-lr-"};
        for (int t = 0; t < 5; t++)
            assert_null(memmem(kvs[i].value, kvs[i].value_len, never[t], strlen(never[t])));
        for (int t = 0; t < n_secrets; t++)
            assert_null(memmem(kvs[i].value, kvs[i].value_len, secrets_seen[t] + 8, strlen(secrets_seen[t]) - 8));
        Llmrelay__AuditEntry *a = llmrelay__audit_entry__unpack(NULL, kvs[i].value_len, kvs[i].value);
        assert_non_null(a);
        assert_string_equal(a->ip, "127.0.0.0/24");
        assert_string_equal(a->node, "testnode");
        char ts[16];
        snprintf(ts, sizeof(ts), "%013lld", (long long)a->ts_ms);
        assert_int_equal(strncmp(k, ts, 13), 0);
        assert_true(a->status >= 200 && a->status < 600);
        llmrelay__audit_entry__free_unpacked(a, NULL);
    }
    Llmrelay__AuditEntry *a = NULL;
    assert_true(audit_has(kvs, n, "audit-get-key", &a));
    assert_string_equal(a->action, "GET /admin/v1/keys/{id}");
    assert_string_equal(a->target, "key_0123456789abcdef");
    assert_string_equal(a->token_name, "viewer1");
    assert_string_equal(a->role, "viewer");
    assert_int_equal(a->status, 404);
    llmrelay__audit_entry__free_unpacked(a, NULL);
    assert_true(audit_has(kvs, n, "audit-logs", &a));
    assert_string_equal(a->action, "GET /admin/v1/logs");
    assert_string_equal(a->target, "key_77");
    assert_string_equal(a->role, "operator");
    assert_int_equal(a->status, 200);
    llmrelay__audit_entry__free_unpacked(a, NULL);
    assert_true(audit_has(kvs, n, "audit-401", &a));
    assert_string_equal(a->token_name, "-");
    assert_int_equal(a->status, 401);
    assert_string_equal(a->action, "GET /admin/v1/providers");
    llmrelay__audit_entry__free_unpacked(a, NULL);
    assert_true(audit_has(kvs, n, "audit-secret-path", &a));
    assert_string_equal(a->target, "(invalid)");
    assert_string_equal(a->token_name, "bootstrap");
    llmrelay__audit_entry__free_unpacked(a, NULL);
    free(kvs);

    /* Read back through the API (viewer and admin may; operator may not: see the role test). */
    r = get(e, "/admin/v1/audit?since=1h&limit=3", VIEWER_TOKEN);
    assert_int_equal(r->status, 200);
    yajl_val entries = jget(r->json, "entries", NULL, NULL);
    assert_int_equal(entries->u.array.len, 3);
    assert_non_null(jstr(entries->u.array.values[0], "action", NULL));
    assert_non_null(jstr(entries->u.array.values[0], "ts", NULL));
    assert_string_equal(jstr(entries->u.array.values[0], "ip", NULL), "127.0.0.0/24");
    char cursor[128], cpath[256];
    snprintf(cursor, sizeof(cursor), "%s", jstr(r->json, "next_cursor", NULL));
    resp_free(r);
    snprintf(cpath, sizeof(cpath), "/admin/v1/audit?since=1h&limit=3&cursor=%s", cursor);
    r = get(e, cpath, BOOTSTRAP_TOKEN);
    assert_int_equal(r->status, 200);
    entries = jget(r->json, "entries", NULL, NULL);
    assert_int_equal(entries->u.array.len, 3);
    resp_free(r);
    r = get(e, "/admin/v1/audit?since=bad", BOOTSTRAP_TOKEN);
    expect_error(r, 400, "invalid_request");
    resp_free(r);
}

/* Entries older than 7 days by the node's clock go; younger ones stay. */
static void test_audit_sweep(void **state)
{
    env_t *e = *state;
    const int64_t day = 24LL * 3600 * 1000;
    e->clock_offset_ms = -8 * day;
    resp_t *r = call(e, "GET", "/admin/v1/providers", VIEWER_TOKEN, NULL, 0, "sweep-old");
    resp_free(r);
    e->clock_offset_ms = -6 * day;
    r = call(e, "GET", "/admin/v1/providers", VIEWER_TOKEN, NULL, 0, "sweep-young");
    resp_free(r);
    e->clock_offset_ms = 0;
    kv_t *kvs = calloc(4096, sizeof(*kvs));
    size_t n;
    for (int i = 0;; i++) {
        n = etcd_read_prefix("/admintest/audit/", kvs, 4096);
        if (audit_has(kvs, n, "sweep-old", NULL) && audit_has(kvs, n, "sweep-young", NULL))
            break;
        assert_true(i < 300);
        usleep(20000);
    }
    e->sweep_called = false;
    e->sweep_at_ms = real_now_ms();
    uv_async_send(&e->sweep_async);
    for (int i = 0; !e->sweep_called; i++) {
        assert_true(i < 500);
        usleep(10000);
    }
    assert_int_equal(e->sweep_rc, 0);
    for (int i = 0;; i++) {
        n = etcd_read_prefix("/admintest/audit/", kvs, 4096);
        if (!audit_has(kvs, n, "sweep-old", NULL))
            break;
        assert_true(i < 300);
        usleep(20000);
    }
    assert_true(audit_has(kvs, n, "sweep-young", NULL));
    assert_true(n > 50); /* today's entries are all still there */
    free(kvs);
}

/* Last: stops etcd. Writes then fail with 503; reads and readiness go on from the cache. */
static void test_etcd_down(void **state)
{
    env_t *e = *state;
    etcd_fixture_stop(&etcd_fx);
    resp_t *r = send_json(e, "PUT", "/admin/v1/providers/openai-main", BOOTSTRAP_TOKEN, provider_body);
    expect_error(r, 503, "etcd_unavailable");
    resp_free(r);
    r = send_json(e, "POST", "/admin/v1/keys", BOOTSTRAP_TOKEN, "{\"name\":\"z\"}");
    expect_error(r, 503, "etcd_unavailable");
    resp_free(r);
    r = get(e, "/admin/v1/providers/openai-main", VIEWER_TOKEN);
    assert_int_equal(r->status, 200);
    resp_free(r);
    for (int i = 0; i < 300; i++) {
        r = get(e, "/readyz", NULL);
        bool down = strcmp(jstr(r->json, "etcd", NULL), "unreachable") == 0;
        if (down) {
            assert_int_equal(r->status, 200);
            assert_string_equal(jstr(r->json, "snapshot", NULL), "cached");
        }
        resp_free(r);
        if (down)
            break;
        assert_true(i < 299);
        usleep(50000);
    }
}

static int group_setup(void **state)
{
    *state = NULL;
    if (etcd_fixture_start(&etcd_fx) != 0)
        return -1;
    *state = live_env();
    return 0;
}

static int group_teardown(void **state)
{
    env_t *e = *state;
    if (e != NULL) {
        env_stop(e);
        free(e);
    }
    etcd_fixture_destroy(&etcd_fx);
    return 0;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_mask_and_names),
        cmocka_unit_test(test_ip_and_time_helpers),
        cmocka_unit_test(test_no_token_configured),
    };
    const struct CMUnitTest live[] = {
        cmocka_unit_test(test_health_auth_routing),
        cmocka_unit_test(test_providers),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_prices),
        cmocka_unit_test(test_tokens_and_roles),
        cmocka_unit_test(test_rotate_and_spent),
        cmocka_unit_test(test_logs_and_usage),
        cmocka_unit_test(test_audit),
        cmocka_unit_test(test_audit_sweep),
        cmocka_unit_test(test_etcd_down),
    };
    int failed = cmocka_run_group_tests_name("admin_pure", pure, NULL, NULL);
    failed += cmocka_run_group_tests_name("admin_live", live, group_setup, group_teardown);
    curl_global_cleanup();
    return failed;
}
