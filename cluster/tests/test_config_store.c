/* Tests of config_store against a real etcd: initial load (paged ranges, unrelated keys
 * ignored), writes seen by a second instance through its watch, deletes, the snapshot
 * file (fail static when etcd is down) and catch-up after an etcd outage.
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
#include <sys/stat.h>
#include <unistd.h>

#include "cluster/config_store.h"
#include "cluster/tests/etcd_fixture.h"

static etcd_fixture_t fx;
static char snap_dir[128];

#define HASH_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define HASH_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

/* What a store's callback saw last. */
struct seen {
    int calls;
    bool flag;
    size_t n_providers, n_keys, n_tokens;
    char providers[8][32];
    int64_t revision;
};

struct env {
    uv_loop_t loop;
    curl_uv_t *cu;
    etcd_client_t *etcd;
};

static void env_init(struct env *e)
{
    assert_int_equal(uv_loop_init(&e->loop), 0);
    e->cu = curl_uv_create(&e->loop);
    assert_int_equal(etcd_client_create(&e->loop, e->cu, fx.endpoint, &e->etcd), 0);
}

static void env_fini(struct env *e)
{
    etcd_client_destroy(e->etcd);
    curl_uv_destroy(e->cu);
    assert_int_equal(fixture_loop_close(&e->loop), 0);
}

static void update_cb(config_store_t *s, const Llmrelay__Snapshot *snap, void *data)
{
    (void)s;
    struct seen *v = data;
    v->calls++;
    v->flag = true;
    v->n_providers = snap->n_providers;
    v->n_keys = snap->n_keys;
    v->n_tokens = snap->n_tokens;
    v->revision = snap->revision;
    for (size_t i = 0; i < snap->n_providers && i < 8; i++)
        snprintf(v->providers[i], sizeof(v->providers[i]), "%s", snap->providers[i]->name);
}

struct wr {
    bool done;
    int status;
};

static void write_cb(config_store_t *s, int status, void *data)
{
    (void)s;
    struct wr *w = data;
    w->done = true;
    w->status = status;
}

static void raw_done(etcd_client_t *c, int status, int64_t rev, void *data)
{
    (void)c;
    (void)rev;
    struct wr *w = data;
    w->done = true;
    w->status = status;
}

static void raw_put(struct env *e, const char *key, const ProtobufCMessage *m)
{
    uint8_t buf[1024];
    size_t len = protobuf_c_message_pack(m, buf);
    struct wr w = {0};
    assert_int_equal(etcd_put(e->etcd, (const uint8_t *)key, strlen(key), buf, len, 0, raw_done, &w), 0);
    assert_true(fixture_run_until(&e->loop, &w.done, 8000));
    assert_int_equal(w.status, 0);
}

static void make_provider(Llmrelay__Provider *p, char *name)
{
    static char *models[] = {"gpt-x", "gpt-y"};
    llmrelay__provider__init(p);
    p->name = name;
    p->type = "openai";
    p->base_url = "http://127.0.0.1:1/v1";
    p->n_models = 2;
    p->models = models;
    p->priority = 3;
}

static bool has_provider(const struct seen *v, const char *name)
{
    for (size_t i = 0; i < v->n_providers && i < 8; i++)
        if (strcmp(v->providers[i], name) == 0)
            return true;
    return false;
}

static bool wait_provider(struct env *e, const struct seen *v, const char *name, bool present, uint64_t ms)
{
    uv_update_time(&e->loop);
    uint64_t deadline = uv_now(&e->loop) + ms;
    while (has_provider(v, name) != present && uv_now(&e->loop) < deadline)
        fixture_run_for(&e->loop, 10);
    return has_provider(v, name) == present;
}

static bool wait_synced(struct env *e, config_store_t *s, bool want, uint64_t ms)
{
    uv_update_time(&e->loop);
    uint64_t deadline = uv_now(&e->loop) + ms;
    while (config_store_synced(s) != want && uv_now(&e->loop) < deadline)
        fixture_run_for(&e->loop, 10);
    return config_store_synced(s) == want;
}

static void snap_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", snap_dir, name);
}

static void test_load(void **state)
{
    (void)state;
    struct env e;
    env_init(&e);
    Llmrelay__Provider p;
    make_provider(&p, "p1");
    raw_put(&e, "/t1/config/providers/p1", &p.base);
    Llmrelay__ApiKey k;
    llmrelay__api_key__init(&k);
    k.id = "key1";
    k.hash = HASH_A;
    k.status = "active";
    raw_put(&e, "/t1/config/keys/" HASH_A, &k.base);
    Llmrelay__AdminToken t;
    llmrelay__admin_token__init(&t);
    t.name = "root";
    t.role = "admin";
    t.hash = HASH_B;
    raw_put(&e, "/t1/config/tokens/" HASH_B, &t.base);
    raw_put(&e, "/t1/config/prices/x", &p.base);      /* not part of the snapshot */
    raw_put(&e, "/t1x/config/providers/zz", &p.base); /* other prefix */
    /* many providers: more than one page */
    char name[32], key[96];
    static struct wr bulk[1205];
    for (int i = 0; i < 1205; i++) {
        snprintf(name, sizeof(name), "bulk%04d", i);
        snprintf(key, sizeof(key), "/t1/config/providers/%s", name);
        make_provider(&p, name);
        uint8_t buf[256];
        size_t len = protobuf_c_message_pack(&p.base, buf);
        assert_int_equal(etcd_put(e.etcd, (const uint8_t *)key, strlen(key), buf, len, 0, raw_done, &bulk[i]), 0);
        if (i % 100 == 99 || i == 1204)
            assert_true(fixture_run_until(&e.loop, &bulk[i].done, 8000));
    }
    for (int i = 0; i < 1205; i++) {
        assert_true(fixture_run_until(&e.loop, &bulk[i].done, 8000));
        assert_int_equal(bulk[i].status, 0);
    }

    char path[192];
    snap_path(path, sizeof(path), "load.pb");
    struct seen v = {0};
    config_store_t *s;
    assert_int_equal(config_store_create(&e.loop, e.etcd, "/t1/", path, update_cb, &v, &s), 0);
    assert_int_equal(v.calls, 0);
    assert_false(config_store_has_snapshot(s));
    assert_true(fixture_run_until(&e.loop, &v.flag, 8000));
    assert_int_equal(v.n_providers, 1206);
    assert_int_equal(v.n_keys, 1);
    assert_int_equal(v.n_tokens, 1);
    assert_true(v.revision > 0);
    assert_true(wait_synced(&e, s, true, 5000));
    assert_true(config_store_has_snapshot(s));
    const Llmrelay__Snapshot *cur = config_store_current(s);
    assert_string_equal(cur->keys[0]->id, "key1");
    assert_string_equal(cur->tokens[0]->role, "admin");
    assert_string_equal(cur->providers[1205]->name, "p1");
    assert_int_equal(cur->providers[1205]->n_models, 2);

    /* the snapshot file follows, mode 0600 */
    fixture_run_for(&e.loop, 400);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    Llmrelay__Snapshot *file;
    assert_int_equal(config_store_load_file(path, &file), 0);
    assert_int_equal(file->n_providers, 1206);
    assert_int_equal(file->revision, config_store_revision(s));
    assert_true(file->saved_at > 0);
    llmrelay__snapshot__free_unpacked(file, NULL);

    config_store_destroy(s);
    env_fini(&e);
}

static void test_two_instances(void **state)
{
    (void)state;
    struct env e1, e2;
    env_init(&e1);
    env_init(&e2);
    struct seen v1 = {0}, v2 = {0};
    config_store_t *s1, *s2;
    assert_int_equal(config_store_create(&e1.loop, e1.etcd, "/t2/", NULL, update_cb, &v1, &s1), 0);
    assert_int_equal(config_store_create(&e2.loop, e2.etcd, "/t2/", NULL, update_cb, &v2, &s2), 0);
    assert_true(wait_synced(&e1, s1, true, 5000));
    assert_true(wait_synced(&e2, s2, true, 5000));

    Llmrelay__Provider p;
    make_provider(&p, "shared");
    struct wr w = {0};
    assert_int_equal(config_store_put_provider(s1, &p, write_cb, &w), 0);
    assert_true(fixture_run_until(&e1.loop, &w.done, 5000));
    assert_int_equal(w.status, 0);
    /* seen by the other instance within 1 s */
    assert_true(wait_provider(&e2, &v2, "shared", true, 1000));
    assert_true(wait_provider(&e1, &v1, "shared", true, 1000));

    Llmrelay__ApiKey k;
    llmrelay__api_key__init(&k);
    k.hash = "not-a-hash";
    assert_int_equal(config_store_put_key(s1, &k, write_cb, &w), -EINVAL);
    k.hash = HASH_A;
    k.id = "k";
    memset(&w, 0, sizeof(w));
    assert_int_equal(config_store_put_key(s1, &k, write_cb, &w), 0);
    assert_true(fixture_run_until(&e1.loop, &w.done, 5000));
    assert_int_equal(w.status, 0);
    Llmrelay__AdminToken t;
    llmrelay__admin_token__init(&t);
    t.hash = HASH_B;
    t.role = "viewer";
    memset(&w, 0, sizeof(w));
    assert_int_equal(config_store_put_token(s1, &t, write_cb, &w), 0);
    assert_true(fixture_run_until(&e1.loop, &w.done, 5000));
    uv_update_time(&e2.loop);
    for (int i = 0; i < 100 && (v2.n_keys != 1 || v2.n_tokens != 1); i++)
        fixture_run_for(&e2.loop, 10);
    assert_int_equal(v2.n_keys, 1);
    assert_int_equal(v2.n_tokens, 1);

    memset(&w, 0, sizeof(w));
    assert_int_equal(config_store_delete_provider(s1, "shared", write_cb, &w), 0);
    assert_true(fixture_run_until(&e1.loop, &w.done, 5000));
    assert_int_equal(w.status, 0);
    assert_true(wait_provider(&e2, &v2, "shared", false, 1000));
    memset(&w, 0, sizeof(w));
    assert_int_equal(config_store_delete_provider(s1, "shared", write_cb, &w), 0);
    assert_true(fixture_run_until(&e1.loop, &w.done, 5000));
    assert_int_equal(w.status, -ENOENT);
    assert_int_equal(config_store_delete_provider(s1, "a/b", write_cb, &w), -EINVAL);

    /* destroy with a write in flight: no callback */
    struct wr pending = {0};
    assert_int_equal(config_store_put_provider(s1, &p, write_cb, &pending), 0);
    config_store_destroy(s1);
    config_store_destroy(s2);
    fixture_run_for(&e1.loop, 100);
    assert_false(pending.done);
    env_fini(&e1);
    env_fini(&e2);
}

static void test_fail_static_and_catch_up(void **state)
{
    (void)state;
    char path[192];
    snap_path(path, sizeof(path), "static.pb");
    struct env e;
    env_init(&e);
    struct seen v = {0};
    config_store_t *s;
    Llmrelay__Provider p;
    make_provider(&p, "before");
    raw_put(&e, "/t3/config/providers/before", &p.base);
    assert_int_equal(config_store_create(&e.loop, e.etcd, "/t3/", path, update_cb, &v, &s), 0);
    assert_true(wait_synced(&e, s, true, 5000));
    assert_true(has_provider(&v, "before"));

    /* etcd goes down: the store keeps its view and notices */
    etcd_fixture_stop(&fx);
    assert_true(wait_synced(&e, s, false, 5000));
    assert_true(config_store_has_snapshot(s));
    assert_int_equal(config_store_current(s)->n_providers, 1);
    struct wr w = {0};
    make_provider(&p, "lost");
    assert_int_equal(config_store_put_provider(s, &p, write_cb, &w), 0);
    assert_true(fixture_run_until(&e.loop, &w.done, 8000));
    assert_true(w.status < 0);

    /* a node starting now serves from the snapshot file */
    struct env e2;
    env_init(&e2);
    struct seen v2 = {0};
    config_store_t *s2;
    assert_int_equal(config_store_create(&e2.loop, e2.etcd, "/t3/", path, update_cb, &v2, &s2), 0);
    assert_int_equal(v2.calls, 0); /* not synchronous */
    assert_true(config_store_has_snapshot(s2));
    assert_true(fixture_run_until(&e2.loop, &v2.flag, 1000));
    assert_true(has_provider(&v2, "before"));
    assert_false(config_store_synced(s2));
    fixture_run_for(&e2.loop, 300);
    assert_false(config_store_synced(s2));

    /* etcd returns with changes made meanwhile: both catch up */
    assert_int_equal(etcd_fixture_restart(&fx), 0);
    struct env wenv;
    env_init(&wenv);
    make_provider(&p, "during");
    raw_put(&wenv, "/t3/config/providers/during", &p.base);
    env_fini(&wenv);
    assert_true(wait_provider(&e, &v, "during", true, 8000));
    assert_true(wait_synced(&e, s, true, 5000));
    assert_true(wait_provider(&e2, &v2, "during", true, 8000));
    assert_true(wait_synced(&e2, s2, true, 5000));
    assert_true(has_provider(&v2, "before"));
    assert_false(has_provider(&v2, "lost"));

    config_store_destroy(s2);
    env_fini(&e2);
    config_store_destroy(s);
    env_fini(&e);
}

static void compact(int64_t rev)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "curl -sf -o /dev/null -X POST %s/v3/kv/compaction -d '{\"revision\":\"%lld\",\"physical\":true}'",
             fx.endpoint, (long long)rev);
    assert_int_equal(system(cmd), 0);
}

struct rev_wr {
    bool done;
    int status;
    int64_t revision;
};

static void rev_done(etcd_client_t *c, int status, int64_t rev, void *data)
{
    (void)c;
    struct rev_wr *w = data;
    w->done = true;
    w->status = status;
    w->revision = rev;
}

static void del_done(etcd_client_t *c, int status, int64_t rev, int64_t deleted, void *data)
{
    (void)deleted;
    rev_done(c, status, rev, data);
}

/* The store's watch comes back after etcd compacted past its revision: full reload. */
static void test_compacted_reload(void **state)
{
    (void)state;
    struct env e;
    env_init(&e);
    struct seen v = {0};
    config_store_t *s;
    Llmrelay__Provider p;
    make_provider(&p, "old");
    raw_put(&e, "/t4/config/providers/old", &p.base);
    assert_int_equal(config_store_create(&e.loop, e.etcd, "/t4/", NULL, update_cb, &v, &s), 0);
    assert_true(wait_synced(&e, s, true, 5000));
    assert_true(has_provider(&v, "old"));

    /* While the store's loop is not running: etcd restarts (the watch stream breaks),
     * keys change, and the history the watch would resume from is compacted away. */
    assert_int_equal(etcd_fixture_restart(&fx), 0);
    struct env w;
    env_init(&w);
    struct rev_wr r = {0};
    const char *old_key = "/t4/config/providers/old";
    assert_int_equal(etcd_delete(w.etcd, (const uint8_t *)old_key, strlen(old_key), NULL, 0, del_done, &r), 0);
    assert_true(fixture_run_until(&w.loop, &r.done, 5000));
    assert_int_equal(r.status, 0);
    make_provider(&p, "new");
    raw_put(&w, "/t4/config/providers/new", &p.base);
    memset(&r, 0, sizeof(r));
    assert_int_equal(etcd_put(w.etcd, (const uint8_t *)"/t4/x", 5, (const uint8_t *)"", 0, 0, rev_done, &r), 0);
    assert_true(fixture_run_until(&w.loop, &r.done, 5000));
    env_fini(&w);
    compact(r.revision);

    assert_true(wait_provider(&e, &v, "new", true, 8000));
    assert_false(has_provider(&v, "old"));
    assert_true(wait_synced(&e, s, true, 5000));
    assert_true(config_store_revision(s) >= r.revision);
    config_store_destroy(s);
    env_fini(&e);
}

static void test_file_roundtrip(void **state)
{
    (void)state;
    char path[192];
    snap_path(path, sizeof(path), "rt.pb");
    Llmrelay__Snapshot *out;
    assert_int_equal(config_store_load_file(path, &out), -ENOENT);
    Llmrelay__Snapshot snap;
    llmrelay__snapshot__init(&snap);
    Llmrelay__Provider p, *pp = &p;
    make_provider(&p, "x");
    snap.n_providers = 1;
    snap.providers = &pp;
    snap.revision = 42;
    assert_int_equal(config_store_save_file(&snap, path), 0);
    assert_int_equal(config_store_load_file(path, &out), 0);
    assert_int_equal(out->revision, 42);
    assert_string_equal(out->providers[0]->name, "x");
    llmrelay__snapshot__free_unpacked(out, NULL);
    FILE *f = fopen(path, "w");
    fputs("\xff\xff\xff garbage", f);
    fclose(f);
    assert_int_equal(config_store_load_file(path, &out), -EINVAL);
}

static int setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    snprintf(snap_dir, sizeof(snap_dir), "/tmp/llmrelay-cs-XXXXXX");
    if (mkdtemp(snap_dir) == NULL)
        return -1;
    return etcd_fixture_start(&fx) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    etcd_fixture_destroy(&fx);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", snap_dir);
    if (system(cmd) != 0)
        return -1;
    curl_global_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_roundtrip),   cmocka_unit_test(test_load),
        cmocka_unit_test(test_two_instances),    cmocka_unit_test(test_fail_static_and_catch_up),
        cmocka_unit_test(test_compacted_reload),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
