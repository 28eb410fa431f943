/* test_admin.c — the admin API against a real etcd.
 *
 * A loop thread runs what node/main.c runs on its main loop (curl_uv + etcd client +
 * config store + admin listener on 127.0.0.1:0); the test thread drives it over HTTP with
 * libcurl's easy interface, as llmrelayctl does. A second environment points the store at a
 * dead etcd port with no token anywhere, for the "no admin token configured" and
 * not-ready cases. Pure helpers (masking, names) are tested without a loop. */
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
} env_t;

static etcd_fixture_t etcd_fx;
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

static void on_stop(uv_async_t *h)
{
    env_t *e = h->data;
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
    char err[256];
    int rc = admin_start(&e->loop, &cfg, e->store, on_status, e, &e->admin, err, sizeof(err));
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
    char rid[128];
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
        cmocka_unit_test(test_no_token_configured),
    };
    const struct CMUnitTest live[] = {
        cmocka_unit_test(test_health_auth_routing),
        cmocka_unit_test(test_providers),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_etcd_down),
    };
    int failed = cmocka_run_group_tests_name("admin_pure", pure, NULL, NULL);
    failed += cmocka_run_group_tests_name("admin_live", live, group_setup, group_teardown);
    curl_global_cleanup();
    return failed;
}
