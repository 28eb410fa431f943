/* Tests of curl_uv + the etcd client against a real etcd (see etcd_fixture.h): unary
 * calls, binary keys/values, txn both ways, leases (keepalive and expiry), watches (put
 * and delete events, resume after an etcd restart, compaction), endpoint failover and
 * cancellation without callbacks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/etcd.h"
#include "cluster/tests/etcd_fixture.h"

static etcd_fixture_t fx;

struct env {
    uv_loop_t loop;
    curl_uv_t *cu;
    etcd_client_t *c;
};

struct result {
    bool done;
    int status;
    int64_t revision;
    int64_t count; /* deleted / n kvs */
    bool more, succeeded;
    int64_t lease, ttl;
    etcd_kv_t kvs[8];
    size_t n_kvs;
    uint8_t store[8][64];
    uint8_t vstore[8][64];
    int calls;
};

static void env_init(struct env *e, const char *endpoints)
{
    assert_int_equal(uv_loop_init(&e->loop), 0);
    e->cu = curl_uv_create(&e->loop);
    assert_non_null(e->cu);
    assert_int_equal(etcd_client_create(&e->loop, e->cu, endpoints, &e->c), 0);
}

static void env_fini(struct env *e)
{
    etcd_client_destroy(e->c);
    curl_uv_destroy(e->cu);
    assert_int_equal(fixture_loop_close(&e->loop), 0);
}

static void copy_kvs(struct result *r, const etcd_kv_t *kvs, size_t n)
{
    r->n_kvs = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        r->kvs[i] = kvs[i];
        assert_true(kvs[i].key_len <= 64 && kvs[i].value_len <= 64);
        memcpy(r->store[i], kvs[i].key, kvs[i].key_len);
        memcpy(r->vstore[i], kvs[i].value, kvs[i].value_len);
        r->kvs[i].key = r->store[i];
        r->kvs[i].value = r->vstore[i];
    }
}

static void range_cb(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t n, bool more,
                     void *data)
{
    (void)c;
    struct result *r = data;
    r->done = true;
    r->calls++;
    r->status = status;
    r->revision = revision;
    r->more = more;
    copy_kvs(r, kvs, n);
}

static void done_cb(etcd_client_t *c, int status, int64_t revision, void *data)
{
    (void)c;
    struct result *r = data;
    r->done = true;
    r->calls++;
    r->status = status;
    r->revision = revision;
}

static void delete_cb(etcd_client_t *c, int status, int64_t revision, int64_t deleted, void *data)
{
    (void)c;
    struct result *r = data;
    r->done = true;
    r->calls++;
    r->status = status;
    r->revision = revision;
    r->count = deleted;
}

static void txn_cb(etcd_client_t *c, int status, bool succeeded, int64_t revision, const etcd_op_result_t *res,
                   size_t n, void *data)
{
    (void)c;
    struct result *r = data;
    r->done = true;
    r->calls++;
    r->status = status;
    r->succeeded = succeeded;
    r->revision = revision;
    r->count = (int64_t)n;
    if (n > 0 && res[0].type == ETCD_OP_RANGE)
        copy_kvs(r, res[0].kvs, res[0].n_kvs);
}

static void lease_cb(etcd_client_t *c, int status, int64_t id, int64_t ttl, void *data)
{
    (void)c;
    struct result *r = data;
    r->done = true;
    r->calls++;
    r->status = status;
    r->lease = id;
    r->ttl = ttl;
}

#define WAIT(e, r) assert_true(fixture_run_until(&(e)->loop, &(r)->done, 12000))
#define K(s) (const uint8_t *)(s), strlen(s)

static void do_put(struct env *e, const char *key, const char *value, int64_t lease)
{
    struct result r = {0};
    assert_int_equal(etcd_put(e->c, K(key), K(value), lease, done_cb, &r), 0);
    WAIT(e, &r);
    assert_int_equal(r.status, 0);
    assert_true(r.revision > 0);
}

static void do_range(struct env *e, const char *key, struct result *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(etcd_range(e->c, K(key), NULL, 0, 0, 0, range_cb, r), 0);
    WAIT(e, r);
}

static void test_put_range_delete(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, fx.endpoint);
    struct result r = {0};

    /* binary key and value: NUL and 0xff bytes */
    const uint8_t bkey[] = {'/', 't', '/', 'b', 0, 0xff, 1};
    const uint8_t bval[] = {0, 1, 2, 0xff, 0xfe, 0, 'x'};
    assert_int_equal(etcd_put(e.c, bkey, sizeof(bkey), bval, sizeof(bval), 0, done_cb, &r), 0);
    assert_false(r.done); /* never synchronous */
    WAIT(&e, &r);
    assert_int_equal(r.status, 0);
    do_put(&e, "/t/a", "one", 0);
    do_put(&e, "/t/c", "", 0); /* empty value */
    do_put(&e, "/u/x", "other", 0);

    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_range_prefix(e.c, K("/t/"), 0, 0, range_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.n_kvs, 3);
    assert_memory_equal(r.kvs[0].key, "/t/a", 4);
    assert_memory_equal(r.kvs[0].value, "one", 3);
    assert_int_equal(r.kvs[1].key_len, sizeof(bkey));
    assert_memory_equal(r.kvs[1].key, bkey, sizeof(bkey));
    assert_int_equal(r.kvs[1].value_len, sizeof(bval));
    assert_memory_equal(r.kvs[1].value, bval, sizeof(bval));
    assert_int_equal(r.kvs[2].value_len, 0);
    assert_true(r.kvs[0].version == 1 && r.kvs[0].create_revision > 0 && r.kvs[0].mod_revision > 0);

    /* paging */
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_range_prefix(e.c, K("/t/"), 2, 0, range_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.n_kvs, 2);
    assert_true(r.more);

    /* missing key: the gateway omits kvs */
    do_range(&e, "/t/missing", &r);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.n_kvs, 0);
    assert_false(r.more);

    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_delete(e.c, K("/t/a"), NULL, 0, delete_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.count, 1);
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_delete(e.c, K("/t/a"), NULL, 0, delete_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.count, 0);
    do_range(&e, "/t/a", &r);
    assert_int_equal(r.n_kvs, 0);
    assert_true(etcd_client_reachable(e.c));
    env_fini(&e);
}

static void test_txn(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, fx.endpoint);
    struct result r = {0};
    etcd_compare_t cmp = {.key = K("/txn/k"), .target = ETCD_TARGET_VERSION, .result = ETCD_CMP_EQUAL, .number = 0};
    etcd_op_t put = {.type = ETCD_OP_PUT, .key = K("/txn/k"), .value = K("v1")};
    etcd_op_t get = {.type = ETCD_OP_RANGE, .key = K("/txn/k")};

    assert_int_equal(etcd_txn(e.c, &cmp, 1, &put, 1, &get, 1, txn_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.status, 0);
    assert_true(r.succeeded);
    assert_int_equal(r.count, 1);

    /* Same create-if-absent again: fails, and the failure branch reads the value. */
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_txn(e.c, &cmp, 1, &put, 1, &get, 1, txn_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.status, 0);
    assert_false(r.succeeded);
    assert_int_equal(r.n_kvs, 1);
    assert_memory_equal(r.kvs[0].value, "v1", 2);

    /* Compare on value, success deletes. */
    etcd_compare_t vcmp = {.key = K("/txn/k"), .target = ETCD_TARGET_VALUE, .result = ETCD_CMP_EQUAL, .value = K("v1")};
    etcd_op_t del = {.type = ETCD_OP_DELETE, .key = K("/txn/k")};
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_txn(e.c, &vcmp, 1, &del, 1, NULL, 0, txn_cb, &r), 0);
    WAIT(&e, &r);
    assert_true(r.succeeded);
    do_range(&e, "/txn/k", &r);
    assert_int_equal(r.n_kvs, 0);

    /* MOD compare with GREATER fails on an absent key (mod_revision 0). */
    etcd_compare_t mcmp = {.key = K("/txn/k"), .target = ETCD_TARGET_MOD, .result = ETCD_CMP_GREATER, .number = 0};
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_txn(e.c, &mcmp, 1, &put, 1, NULL, 0, txn_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.status, 0);
    assert_false(r.succeeded);
    env_fini(&e);
}

static void test_lease(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, fx.endpoint);
    struct result r = {0};
    assert_int_equal(etcd_lease_grant(e.c, 2, lease_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.status, 0);
    assert_true(r.lease != 0);
    assert_int_equal(r.ttl, 2);
    int64_t lease = r.lease;
    do_put(&e, "/lease/k", "alive", lease);

    /* keep it alive past its TTL */
    for (int i = 0; i < 3; i++) {
        fixture_run_for(&e.loop, 900);
        memset(&r, 0, sizeof(r));
        assert_int_equal(etcd_lease_keepalive(e.c, lease, lease_cb, &r), 0);
        WAIT(&e, &r);
        assert_int_equal(r.status, 0);
        assert_true(r.ttl > 0);
    }
    do_range(&e, "/lease/k", &r);
    assert_int_equal(r.n_kvs, 1);
    assert_int_equal(r.kvs[0].lease, lease);

    /* then let it expire: key gone, keepalive says -ENOENT */
    fixture_run_for(&e.loop, 3500);
    do_range(&e, "/lease/k", &r);
    assert_int_equal(r.n_kvs, 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_lease_keepalive(e.c, lease, lease_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.status, -ENOENT);
    assert_int_equal(r.ttl, 0);

    /* revoke: a granted lease, then an unknown one */
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_lease_grant(e.c, 30, lease_cb, &r), 0);
    WAIT(&e, &r);
    lease = r.lease;
    do_put(&e, "/lease/k2", "x", lease);
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_lease_revoke(e.c, lease, done_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.status, 0);
    do_range(&e, "/lease/k2", &r);
    assert_int_equal(r.n_kvs, 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_lease_revoke(e.c, lease, done_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.status, -ENOENT);
    assert_true(etcd_client_reachable(e.c));
    env_fini(&e);
}

/* --- watches -------------------------------------------------------------------------- */
struct wstate {
    int created; /* status 0, n 0 */
    int outages; /* status < 0 */
    int puts, deletes;
    char last_key[64], last_value[64];
    int64_t last_rev, compact;
    bool flag; /* set by any event */
    bool stop_in_cb;
    etcd_watch_t *w;
};

static void watch_cb(etcd_watch_t *w, int status, const etcd_watch_event_t *ev, size_t n, int64_t revision,
                     int64_t compact, void *data)
{
    struct wstate *s = data;
    if (status < 0) {
        s->outages++;
        return;
    }
    if (compact > 0) {
        s->compact = compact;
        s->flag = true;
        return;
    }
    if (n == 0) {
        s->created++;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (ev[i].type == ETCD_EVENT_PUT)
            s->puts++;
        else
            s->deletes++;
        snprintf(s->last_key, sizeof(s->last_key), "%.*s", (int)ev[i].kv.key_len, (const char *)ev[i].kv.key);
        snprintf(s->last_value, sizeof(s->last_value), "%.*s", (int)ev[i].kv.value_len, (const char *)ev[i].kv.value);
    }
    s->last_rev = revision;
    s->flag = true;
    if (s->stop_in_cb) {
        etcd_watch_stop(w);
        s->w = NULL;
    }
}

static bool wait_count(struct env *e, const int *counter, int target, uint64_t ms)
{
    bool f = false;
    uv_update_time(&e->loop);
    uint64_t deadline = uv_now(&e->loop) + ms;
    while (*counter < target && uv_now(&e->loop) < deadline)
        fixture_run_for(&e->loop, 20);
    f = *counter >= target;
    return f;
}

static void test_watch_events_and_restart(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, fx.endpoint);
    struct wstate ws = {0};
    ws.w = etcd_watch_prefix(e.c, K("/w/"), 0, watch_cb, &ws);
    assert_non_null(ws.w);
    assert_true(wait_count(&e, &ws.created, 1, 5000));

    do_put(&e, "/w/a", "1", 0);
    do_put(&e, "/other", "x", 0); /* outside the prefix */
    assert_true(wait_count(&e, &ws.puts, 1, 3000));
    assert_string_equal(ws.last_key, "/w/a");
    assert_string_equal(ws.last_value, "1");

    struct result r = {0};
    assert_int_equal(etcd_delete(e.c, K("/w/a"), NULL, 0, delete_cb, &r), 0);
    assert_true(wait_count(&e, &ws.deletes, 1, 3000));
    assert_string_equal(ws.last_key, "/w/a");
    assert_int_equal(ws.puts, 1);

    /* etcd goes away: one outage report, then the watch comes back by itself */
    etcd_fixture_stop(&fx);
    assert_true(wait_count(&e, &ws.outages, 1, 5000));
    fixture_run_for(&e.loop, 800); /* several failed reconnects: still one report */
    assert_int_equal(ws.outages, 1);
    assert_int_equal(etcd_fixture_restart(&fx), 0);
    do_put(&e, "/w/b", "after", 0);
    assert_true(wait_count(&e, &ws.puts, 2, 8000));
    assert_string_equal(ws.last_key, "/w/b");
    assert_string_equal(ws.last_value, "after");
    assert_int_equal(ws.outages, 1);
    assert_true(ws.created >= 2);

    /* stopping from inside the callback */
    ws.stop_in_cb = true;
    do_put(&e, "/w/c", "x", 0);
    assert_true(wait_count(&e, &ws.puts, 3, 3000));
    assert_null(ws.w);
    do_put(&e, "/w/d", "y", 0);
    fixture_run_for(&e.loop, 300);
    assert_int_equal(ws.puts, 3);
    env_fini(&e);
}

/* Events written while the watch was down are delivered (resume from last rev + 1). */
static void test_watch_catch_up(void **state)
{
    (void)state;
    struct env e, writer;
    env_init(&e, fx.endpoint);
    struct wstate ws = {0};
    ws.w = etcd_watch_prefix(e.c, K("/cu/"), 0, watch_cb, &ws);
    assert_true(wait_count(&e, &ws.created, 1, 5000));
    do_put(&e, "/cu/1", "a", 0);
    assert_true(wait_count(&e, &ws.puts, 1, 3000));

    etcd_fixture_stop(&fx);
    assert_true(wait_count(&e, &ws.outages, 1, 5000));
    assert_int_equal(etcd_fixture_restart(&fx), 0);
    /* write from another client before the watcher's retry timer fires */
    env_init(&writer, fx.endpoint);
    do_put(&writer, "/cu/2", "b", 0);
    do_put(&writer, "/cu/3", "c", 0);
    env_fini(&writer);
    assert_true(wait_count(&e, &ws.puts, 3, 8000));
    assert_string_equal(ws.last_key, "/cu/3");
    etcd_watch_stop(ws.w);
    env_fini(&e);
}

static void compact(const char *endpoint, int64_t rev)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "curl -sf -o /dev/null -X POST %s/v3/kv/compaction -d '{\"revision\":\"%lld\",\"physical\":true}'",
             endpoint, (long long)rev);
    assert_int_equal(system(cmd), 0);
}

static void test_watch_compacted(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, fx.endpoint);
    struct result r = {0};
    assert_int_equal(etcd_put(e.c, K("/cmp/a"), K("1"), 0, done_cb, &r), 0);
    WAIT(&e, &r);
    int64_t first = r.revision;
    do_put(&e, "/cmp/a", "2", 0);
    do_put(&e, "/cmp/a", "3", 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_put(e.c, K("/cmp/a"), K("4"), 0, done_cb, &r), 0);
    WAIT(&e, &r);
    compact(fx.endpoint, r.revision);

    struct wstate ws = {0};
    ws.w = etcd_watch_prefix(e.c, K("/cmp/"), first, watch_cb, &ws);
    assert_true(fixture_run_until(&e.loop, &ws.flag, 5000));
    assert_int_equal(ws.compact, r.revision);
    assert_int_equal(ws.puts, 0);
    etcd_watch_stop(ws.w);

    /* ranging at a compacted revision: -ERANGE */
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_range(e.c, K("/cmp/a"), NULL, 0, 0, first, range_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.status, -ERANGE);
    env_fini(&e);
}

static void test_failover(void **state)
{
    (void)state;
    char eps[256];
    snprintf(eps, sizeof(eps), "http://127.0.0.1:%d,%s", etcd_fixture_dead_port(), fx.endpoint);
    struct env e;
    env_init(&e, eps);
    do_put(&e, "/fo/a", "1", 0);
    struct result r;
    do_range(&e, "/fo/a", &r);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.n_kvs, 1);
    assert_true(etcd_client_reachable(e.c));

    /* a watch over the same list fails over too */
    struct wstate ws = {0};
    ws.w = etcd_watch_prefix(e.c, K("/fo/"), 0, watch_cb, &ws);
    assert_true(wait_count(&e, &ws.created, 1, 5000));
    do_put(&e, "/fo/b", "2", 0);
    assert_true(wait_count(&e, &ws.puts, 1, 3000));
    etcd_watch_stop(ws.w);
    env_fini(&e);

    /* nobody there: bounded attempts, then an error */
    snprintf(eps, sizeof(eps), "http://127.0.0.1:%d,http://127.0.0.1:%d", etcd_fixture_dead_port(),
             etcd_fixture_dead_port());
    env_init(&e, eps);
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_range(e.c, K("/fo/a"), NULL, 0, 0, 0, range_cb, &r), 0);
    WAIT(&e, &r);
    assert_int_equal(r.status, -ECONNREFUSED);
    assert_int_equal(r.calls, 1);
    assert_false(etcd_client_reachable(e.c));
    env_fini(&e);
}

/* Destroy with requests and watches in flight: no callback, no leak. */
static void test_cancel(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, fx.endpoint);
    struct result r1 = {0}, r2 = {0}, r3 = {0};
    assert_int_equal(etcd_put(e.c, K("/cancel/a"), K("1"), 0, done_cb, &r1), 0);
    assert_int_equal(etcd_range(e.c, K("/cancel/a"), NULL, 0, 0, 0, range_cb, &r2), 0);
    assert_int_equal(etcd_put(e.c, K("/cancel/b"), K("1"), 0, done_cb, &r3), 0);
    etcd_cancel_data(e.c, &r3);
    struct wstate ws = {0};
    ws.w = etcd_watch_prefix(e.c, K("/cancel/"), 0, watch_cb, &ws);
    fixture_run_for(&e.loop, 1); /* maybe a bit of progress */
    etcd_client_destroy(e.c);
    e.c = NULL;
    fixture_run_for(&e.loop, 200);
    assert_int_equal(r3.calls, 0);
    int total = r1.calls + r2.calls;
    assert_true(total <= 2);
    /* and a curl_uv destroyed with a transfer attached */
    CURL *easy = curl_easy_init();
    char url[128];
    snprintf(url, sizeof(url), "%s/health", fx.endpoint);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, NULL);
    assert_int_equal(curl_uv_add(e.cu, easy, (curl_uv_done_cb)abort, NULL), 0);
    assert_int_equal(curl_uv_count(e.cu), 1);
    curl_uv_destroy(e.cu);
    curl_easy_cleanup(easy);
    assert_int_equal(fixture_loop_close(&e.loop), 0);
}

/* curl_uv alone: many concurrent transfers, each callback exactly once. */
struct xfer_state {
    int done, ok;
};

static size_t sink(char *p, size_t s, size_t n, void *d)
{
    (void)p;
    (void)d;
    return s * n;
}

static void xfer_done(CURL *easy, CURLcode rc, void *data)
{
    struct xfer_state *x = data;
    x->done++;
    if (rc == CURLE_OK)
        x->ok++;
    curl_easy_cleanup(easy);
}

static void test_curl_uv_many(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    curl_uv_t *cu = curl_uv_create(&loop);
    struct xfer_state x = {0};
    char url[128];
    snprintf(url, sizeof(url), "%s/health", fx.endpoint);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 50; i++) {
            CURL *easy = curl_easy_init();
            curl_easy_setopt(easy, CURLOPT_URL, url);
            curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, sink);
            curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
            assert_int_equal(curl_uv_add(cu, easy, xfer_done, &x), 0);
        }
        uv_update_time(&loop);
        uint64_t deadline = uv_now(&loop) + 10000;
        while (x.done < 50 * (round + 1) && uv_now(&loop) < deadline)
            fixture_run_for(&loop, 20);
    }
    assert_int_equal(x.done, 150);
    assert_int_equal(x.ok, 150);
    assert_int_equal(curl_uv_count(cu), 0);
    curl_uv_destroy(cu);
    assert_int_equal(fixture_loop_close(&loop), 0);
}

static int setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return etcd_fixture_start(&fx) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    etcd_fixture_destroy(&fx);
    curl_global_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_curl_uv_many),
        cmocka_unit_test(test_put_range_delete),
        cmocka_unit_test(test_txn),
        cmocka_unit_test(test_lease),
        cmocka_unit_test(test_watch_compacted),
        cmocka_unit_test(test_failover),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_watch_events_and_restart),
        cmocka_unit_test(test_watch_catch_up),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
