/* Tests of config_store against a real etcd: initial load (paged ranges, unrelated keys
 * ignored), writes seen by a second instance through its watch, deletes, the snapshot
 * file (fail static when etcd is down) and catch-up after an etcd outage; secrets at rest
 * (upstream API keys sealed in etcd and in the snapshot file, opened in the view; wrong
 * key; a sealed value moved to another provider; legacy plaintext records and files).
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

/* --- secrets at rest ------------------------------------------------------------------ */
#define UPKEY1 "sk-UPSTREAM-canary-1111-aaaa"
#define UPKEY2 "sk-UPSTREAM-canary-2222-bbbb"

/* Log lines a store produced. */
struct logs {
    int n;
    char lines[32][512];
    int levels[32];
};

static void log_cb(int level, const char *msg, void *data)
{
    struct logs *l = data;
    if (l->n < 32) {
        snprintf(l->lines[l->n], sizeof(l->lines[l->n]), "%s", msg);
        l->levels[l->n] = level;
    }
    l->n++;
}

/* Lines at level containing needle. */
static int logs_count(const struct logs *l, int level, const char *needle)
{
    int c = 0;
    for (int i = 0; i < l->n && i < 32; i++)
        if (l->levels[i] == level && strstr(l->lines[i], needle) != NULL)
            c++;
    return c;
}

/* No line holds an upstream key, its start, or any sealed text. */
static void logs_clean(const struct logs *l)
{
    for (int i = 0; i < l->n && i < 32; i++) {
        assert_null(strstr(l->lines[i], "sk-UPSTREAM"));
        assert_null(strstr(l->lines[i], "enc:v1:"));
    }
}

static void make_key(secrets_key_t *k, uint8_t fill)
{
    uint8_t raw[SECRETS_KEY_LEN];
    for (size_t i = 0; i < sizeof(raw); i++)
        raw[i] = (uint8_t)(fill + i * 7);
    assert_int_equal(secrets_key_set(k, raw, sizeof(raw)), 0);
}

static config_store_t *create_keyed(struct env *e, const char *prefix, const char *path, const secrets_key_t *key,
                                    struct logs *logs, struct seen *v)
{
    config_store_options_t o = {.secrets_key = key, .log_cb = log_cb, .log_data = logs};
    config_store_t *s;
    assert_int_equal(config_store_create_ex(&e->loop, e->etcd, prefix, path, &o, update_cb, v, &s), 0);
    return s;
}

static const Llmrelay__Provider *find_provider(const Llmrelay__Snapshot *snap, const char *name)
{
    for (size_t i = 0; i < snap->n_providers; i++)
        if (strcmp(snap->providers[i]->name, name) == 0)
            return snap->providers[i];
    return NULL;
}

struct got {
    bool done;
    int status;
    size_t n;
    uint8_t value[8192];
    size_t len;
};

static void got_cb(etcd_client_t *c, int status, int64_t rev, const etcd_kv_t *kvs, size_t n, bool more, void *data)
{
    (void)c;
    (void)rev;
    (void)more;
    struct got *g = data;
    g->done = true;
    g->status = status;
    g->n = n;
    if (status == 0 && n == 1 && kvs[0].value_len <= sizeof(g->value)) {
        memcpy(g->value, kvs[0].value, kvs[0].value_len);
        g->len = kvs[0].value_len;
    }
}

/* The raw value of key in etcd (must exist). */
static void raw_get(struct env *e, const char *key, struct got *g)
{
    memset(g, 0, sizeof(*g));
    assert_int_equal(etcd_range(e->etcd, (const uint8_t *)key, strlen(key), NULL, 0, 0, 0, got_cb, g), 0);
    assert_true(fixture_run_until(&e->loop, &g->done, 5000));
    assert_int_equal(g->status, 0);
    assert_int_equal(g->n, 1);
}

static bool contains(const void *hay, size_t len, const char *needle)
{
    return memmem(hay, len, needle, strlen(needle)) != NULL;
}

static void read_whole(const char *path, uint8_t **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static uint8_t data[1 << 20];
    *len = fread(data, 1, sizeof(data), f);
    fclose(f);
    *buf = data;
}

/* Runs the loop until the view shows provider name with n_keys api keys. */
static const Llmrelay__Provider *wait_keys(struct env *e, config_store_t *s, const char *name, size_t n_keys)
{
    uv_update_time(&e->loop);
    uint64_t deadline = uv_now(&e->loop) + 5000;
    const Llmrelay__Provider *p;
    while (((p = find_provider(config_store_current(s), name)) == NULL || p->n_api_keys != n_keys) &&
           uv_now(&e->loop) < deadline)
        fixture_run_for(&e->loop, 10);
    p = find_provider(config_store_current(s), name);
    if (p == NULL || p->n_api_keys != n_keys)
        fprintf(stderr, "wait_keys %s: %s, %zu keys (want %zu)\n", name, p ? "present" : "absent",
                p ? p->n_api_keys : 0, n_keys);
    assert_non_null(p);
    assert_int_equal(p->n_api_keys, n_keys);
    return p;
}

/* With a key: sealed in etcd and in the file, plaintext in the view of this store and of
 * a second one; the file opens at the next start; other keys and moved values do not. */
static void test_secrets_sealed(void **state)
{
    (void)state;
    char path[192], path2[192];
    snap_path(path, sizeof(path), "sealed.pb");
    snap_path(path2, sizeof(path2), "sealed2.pb");
    secrets_key_t key;
    make_key(&key, 11);
    struct env e1, e2;
    env_init(&e1);
    env_init(&e2);
    struct logs l1 = {0}, l2 = {0};
    struct seen v1 = {0}, v2 = {0};
    config_store_t *s1 = create_keyed(&e1, "/t5/", path, &key, &l1, &v1);
    config_store_t *s2 = create_keyed(&e2, "/t5/", NULL, &key, &l2, &v2);
    secrets_key_dispose(&key); /* the stores keep their own copies */
    assert_int_equal(logs_count(&l1, CONFIG_STORE_LOG_INFO, "encrypted"), 1);
    assert_int_equal(logs_count(&l1, CONFIG_STORE_LOG_WARN, "unencrypted"), 0);
    assert_true(wait_synced(&e1, s1, true, 5000));
    assert_true(wait_synced(&e2, s2, true, 5000));

    Llmrelay__Provider p;
    make_provider(&p, "up");
    char *keys[] = {UPKEY1, UPKEY2};
    p.n_api_keys = 2;
    p.api_keys = keys;
    struct wr w = {0};
    assert_int_equal(config_store_put_provider(s1, &p, write_cb, &w), 0);
    assert_true(fixture_run_until(&e1.loop, &w.done, 5000));
    assert_int_equal(w.status, 0);
    /* the caller's record is untouched */
    assert_string_equal(p.api_keys[0], UPKEY1);

    /* etcd holds only sealed values */
    struct got g;
    raw_get(&e1, "/t5/config/providers/up", &g);
    assert_false(contains(g.value, g.len, "sk-UPSTREAM"));
    assert_false(contains(g.value, g.len, "canary"));
    Llmrelay__Provider *raw = llmrelay__provider__unpack(NULL, g.len, g.value);
    assert_non_null(raw);
    assert_int_equal(raw->n_api_keys, 2);
    assert_true(secrets_is_sealed(raw->api_keys[0]));
    assert_true(secrets_is_sealed(raw->api_keys[1]));
    assert_string_not_equal(raw->api_keys[0], raw->api_keys[1]);
    assert_string_equal(raw->name, "up");
    assert_int_equal(raw->priority, 3);

    /* both views hold the plaintext */
    const Llmrelay__Provider *seen1 = wait_keys(&e1, s1, "up", 2);
    assert_string_equal(seen1->api_keys[0], UPKEY1);
    assert_string_equal(seen1->api_keys[1], UPKEY2);
    const Llmrelay__Provider *seen2 = wait_keys(&e2, s2, "up", 2);
    assert_string_equal(seen2->api_keys[0], UPKEY1);
    assert_string_equal(seen2->api_keys[1], UPKEY2);
    assert_string_equal(seen2->models[1], "gpt-y");

    /* the snapshot file holds only sealed values */
    fixture_run_for(&e1.loop, 400);
    uint8_t *file;
    size_t file_len;
    read_whole(path, &file, &file_len);
    assert_true(file_len > 0);
    assert_true(contains(file, file_len, "enc:v1:"));
    assert_false(contains(file, file_len, "sk-UPSTREAM"));
    assert_false(contains(file, file_len, "canary"));
    Llmrelay__Snapshot *fs;
    assert_int_equal(config_store_load_file(path, &fs), 0);
    assert_int_equal(fs->n_providers, 1);
    assert_int_equal(fs->providers[0]->n_api_keys, 2);
    assert_true(secrets_is_sealed(fs->providers[0]->api_keys[0]));
    llmrelay__snapshot__free_unpacked(fs, NULL);

    /* a sealed value moved to another provider's record does not open there */
    Llmrelay__Provider moved;
    make_provider(&moved, "moved");
    moved.n_api_keys = raw->n_api_keys;
    moved.api_keys = raw->api_keys;
    raw_put(&e1, "/t5/config/providers/moved", &moved.base);
    llmrelay__provider__free_unpacked(raw, NULL);
    wait_keys(&e2, s2, "moved", 0);
    assert_int_equal(logs_count(&l2, CONFIG_STORE_LOG_ERROR, "provider moved:"), 1);
    assert_int_equal(logs_count(&l2, CONFIG_STORE_LOG_ERROR, "provider up"), 0);
    wait_keys(&e2, s2, "up", 2);

    config_store_destroy(s2);
    env_fini(&e2);

    /* a node restarting with the same key while etcd is unreachable: the file opens */
    fixture_run_for(&e1.loop, 400);
    config_store_destroy(s1);
    env_fini(&e1);
    rename(path, path2);
    struct env e3;
    assert_int_equal(uv_loop_init(&e3.loop), 0);
    e3.cu = curl_uv_create(&e3.loop);
    char dead[64];
    snprintf(dead, sizeof(dead), "http://127.0.0.1:%d", etcd_fixture_dead_port());
    assert_int_equal(etcd_client_create(&e3.loop, e3.cu, dead, &e3.etcd), 0);
    make_key(&key, 11);
    struct logs l3 = {0};
    struct seen v3 = {0};
    config_store_t *s3 = create_keyed(&e3, "/t5/", path2, &key, &l3, &v3);
    secrets_key_dispose(&key);
    assert_true(config_store_has_snapshot(s3));
    const Llmrelay__Provider *fp = find_provider(config_store_current(s3), "up");
    assert_non_null(fp);
    assert_int_equal(fp->n_api_keys, 2);
    assert_string_equal(fp->api_keys[0], UPKEY1);
    fp = find_provider(config_store_current(s3), "moved");
    assert_non_null(fp); /* s1 saw it, without usable keys, and saved it so */
    assert_int_equal(fp->n_api_keys, 0);
    assert_int_equal(logs_count(&l1, CONFIG_STORE_LOG_ERROR, "provider moved:"), 1);
    assert_true(fixture_run_until(&e3.loop, &v3.flag, 1000));
    assert_int_equal(l3.n, 1); /* only the start line: nothing legacy, nothing failed */
    logs_clean(&l1);
    logs_clean(&l2);
    logs_clean(&l3);
    config_store_destroy(s3);
    env_fini(&e3);
}

/* A store with another key, or with none, keeps the provider without usable keys. */
static void test_secrets_wrong_key(void **state)
{
    (void)state;
    char path[192];
    snap_path(path, sizeof(path), "wrong.pb");
    struct env e;
    env_init(&e);
    secrets_key_t good, bad;
    make_key(&good, 21);
    make_key(&bad, 22);
    struct logs l1 = {0}, l2 = {0}, l3 = {0};
    struct seen v1 = {0}, v2 = {0}, v3 = {0};
    config_store_t *s1 = create_keyed(&e, "/t6/", NULL, &good, &l1, &v1);
    assert_true(wait_synced(&e, s1, true, 5000));
    Llmrelay__Provider p;
    make_provider(&p, "secret-prov");
    char *keys[] = {UPKEY1};
    p.n_api_keys = 1;
    p.api_keys = keys;
    struct wr w = {0};
    assert_int_equal(config_store_put_provider(s1, &p, write_cb, &w), 0);
    assert_true(fixture_run_until(&e.loop, &w.done, 5000));
    assert_int_equal(w.status, 0);
    wait_keys(&e, s1, "secret-prov", 1);

    config_store_t *s2 = create_keyed(&e, "/t6/", path, &bad, &l2, &v2);
    assert_true(wait_synced(&e, s2, true, 5000));
    const Llmrelay__Provider *got = wait_keys(&e, s2, "secret-prov", 0);
    assert_string_equal(got->type, "openai"); /* the rest of the record is there */
    assert_int_equal(got->n_models, 2);
    assert_int_equal(logs_count(&l2, CONFIG_STORE_LOG_ERROR, "provider secret-prov:"), 1);
    assert_int_equal(logs_count(&l2, CONFIG_STORE_LOG_ERROR, "cannot be decrypted"), 1);
    /* its snapshot file neither holds the plaintext (it never had it) nor loses the record */
    fixture_run_for(&e.loop, 400);
    uint8_t *file;
    size_t file_len;
    read_whole(path, &file, &file_len);
    assert_false(contains(file, file_len, "sk-UPSTREAM"));
    assert_true(contains(file, file_len, "secret-prov"));

    /* no key at all: the warning at start, the sealed value ignored (not used as a key) */
    config_store_t *s3 = create_keyed(&e, "/t6/", NULL, NULL, &l3, &v3);
    assert_int_equal(logs_count(&l3, CONFIG_STORE_LOG_WARN, "unencrypted"), 1);
    assert_true(wait_synced(&e, s3, true, 5000));
    wait_keys(&e, s3, "secret-prov", 0);
    assert_int_equal(logs_count(&l3, CONFIG_STORE_LOG_ERROR, "no --secrets-key-file"), 1);

    /* a bad key is refused */
    secrets_key_t unloaded;
    memset(&unloaded, 0, sizeof(unloaded));
    config_store_options_t o = {.secrets_key = &unloaded};
    config_store_t *s4;
    assert_int_equal(config_store_create_ex(&e.loop, e.etcd, "/t6/", NULL, &o, update_cb, &v3, &s4), -EINVAL);

    logs_clean(&l1);
    logs_clean(&l2);
    logs_clean(&l3);
    secrets_key_dispose(&good);
    secrets_key_dispose(&bad);
    config_store_destroy(s1);
    config_store_destroy(s2);
    config_store_destroy(s3);
    env_fini(&e);
}

/* Records and snapshot files from before the key was set load, warned once per provider;
 * the file is rewritten sealed; a re-save seals the record. */
static void test_secrets_legacy(void **state)
{
    (void)state;
    char path[192];
    snap_path(path, sizeof(path), "legacy.pb");
    struct env e;
    env_init(&e);
    Llmrelay__Provider p;
    make_provider(&p, "old-prov");
    char *keys[] = {UPKEY1, UPKEY2};
    p.n_api_keys = 2;
    p.api_keys = keys;
    raw_put(&e, "/t7/config/providers/old-prov", &p.base);
    /* a plaintext snapshot file written by a node without a key */
    Llmrelay__Snapshot snap;
    llmrelay__snapshot__init(&snap);
    Llmrelay__Provider *pp = &p;
    snap.n_providers = 1;
    snap.providers = &pp;
    snap.revision = 1;
    assert_int_equal(config_store_save_file(&snap, path), 0);

    secrets_key_t key;
    make_key(&key, 31);
    struct logs l = {0};
    struct seen v = {0};
    config_store_t *s = create_keyed(&e, "/t7/", path, &key, &l, &v);
    /* from the file, before etcd answered */
    const Llmrelay__Provider *got = find_provider(config_store_current(s), "old-prov");
    assert_non_null(got);
    assert_int_equal(got->n_api_keys, 2);
    assert_string_equal(got->api_keys[1], UPKEY2);
    assert_int_equal(logs_count(&l, CONFIG_STORE_LOG_WARN, "provider old-prov:"), 1);
    /* from etcd */
    assert_true(wait_synced(&e, s, true, 5000));
    got = wait_keys(&e, s, "old-prov", 2);
    assert_string_equal(got->api_keys[0], UPKEY1);
    /* another change of the same legacy record: still one warning for that provider */
    p.priority = 9;
    raw_put(&e, "/t7/config/providers/old-prov", &p.base);
    uv_update_time(&e.loop);
    for (int i = 0; i < 200 && find_provider(config_store_current(s), "old-prov")->priority != 9; i++)
        fixture_run_for(&e.loop, 10);
    got = wait_keys(&e, s, "old-prov", 2);
    assert_int_equal(got->priority, 9);
    assert_int_equal(logs_count(&l, CONFIG_STORE_LOG_WARN, "provider old-prov:"), 1);
    assert_int_equal(logs_count(&l, CONFIG_STORE_LOG_WARN, "re-save"), 1);
    assert_int_equal(logs_count(&l, CONFIG_STORE_LOG_ERROR, ""), 0);

    /* the file the store wrote is sealed, though etcd still holds plaintext */
    fixture_run_for(&e.loop, 400);
    uint8_t *file;
    size_t file_len;
    read_whole(path, &file, &file_len);
    assert_false(contains(file, file_len, "sk-UPSTREAM"));
    assert_true(contains(file, file_len, "enc:v1:"));

    /* re-saving through the store seals the record in etcd */
    Llmrelay__Provider copy = *got;
    struct wr w = {0};
    assert_int_equal(config_store_put_provider(s, &copy, write_cb, &w), 0);
    assert_true(fixture_run_until(&e.loop, &w.done, 5000));
    assert_int_equal(w.status, 0);
    struct got g;
    raw_get(&e, "/t7/config/providers/old-prov", &g);
    assert_false(contains(g.value, g.len, "sk-UPSTREAM"));
    assert_true(contains(g.value, g.len, "enc:v1:"));
    got = wait_keys(&e, s, "old-prov", 2);
    fixture_run_for(&e.loop, 100);
    got = wait_keys(&e, s, "old-prov", 2);
    assert_string_equal(got->api_keys[0], UPKEY1);
    assert_int_equal(logs_count(&l, CONFIG_STORE_LOG_WARN, "provider old-prov:"), 1);
    logs_clean(&l);

    secrets_key_dispose(&key);
    config_store_destroy(s);
    env_fini(&e);
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
        cmocka_unit_test(test_file_roundtrip),    cmocka_unit_test(test_load),
        cmocka_unit_test(test_two_instances),     cmocka_unit_test(test_fail_static_and_catch_up),
        cmocka_unit_test(test_compacted_reload),  cmocka_unit_test(test_secrets_sealed),
        cmocka_unit_test(test_secrets_wrong_key), cmocka_unit_test(test_secrets_legacy),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
