/* Unit tests of the compiled config snapshot: key lookup by hash, model routing order,
 * aliases, allowlists, reference counting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/sha.h>

#include "node/snapshot.h"

static void hex_of(const char *secret, char out[65], uint8_t raw[32])
{
    SHA256((const unsigned char *)secret, strlen(secret), raw);
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", raw[i]);
}

typedef struct fixture {
    Llmrelay__Snapshot snap;
    Llmrelay__Provider prov[3], *provp[3];
    Llmrelay__ApiKey keys[300], *keyp[300];
    char hashes[300][65];
    char ids[300][16];
    Llmrelay__ModelMap map, *mapp[1];
    char *models_a[2], *models_b[1], *models_c[1], *keys_a[2], *keys_b[1], *allow[1];
} fixture_t;

static fixture_t fx;

static void build_fixture(void)
{
    memset(&fx, 0, sizeof(fx));
    llmrelay__snapshot__init(&fx.snap);
    fx.snap.revision = 42;
    for (int i = 0; i < 3; i++) {
        llmrelay__provider__init(&fx.prov[i]);
        fx.provp[i] = &fx.prov[i];
    }
    fx.models_a[0] = "gpt-4o";
    fx.models_a[1] = "gpt-4o-mini";
    fx.keys_a[0] = "upstream-a1";
    fx.keys_a[1] = "upstream-a2";
    fx.prov[0] = (Llmrelay__Provider)LLMRELAY__PROVIDER__INIT;
    fx.prov[0].name = "alpha";
    fx.prov[0].type = "openai";
    fx.prov[0].base_url = "http://127.0.0.1:1/v1/";
    fx.prov[0].n_models = 2;
    fx.prov[0].models = fx.models_a;
    fx.prov[0].n_api_keys = 2;
    fx.prov[0].api_keys = fx.keys_a;
    fx.prov[0].priority = 1;
    fx.prov[0].weight = 1;
    llmrelay__model_map__init(&fx.map);
    fx.map.alias = "fast";
    fx.map.upstream = "gpt-4o-mini";
    fx.mapp[0] = &fx.map;
    fx.prov[0].n_model_map = 1;
    fx.prov[0].model_map = fx.mapp;

    fx.models_b[0] = "gpt-4o";
    fx.keys_b[0] = "upstream-b";
    fx.prov[1] = (Llmrelay__Provider)LLMRELAY__PROVIDER__INIT;
    fx.prov[1].name = "beta";
    fx.prov[1].type = "openai";
    fx.prov[1].base_url = "http://127.0.0.1:2/v1";
    fx.prov[1].n_models = 1;
    fx.prov[1].models = fx.models_b;
    fx.prov[1].n_api_keys = 1;
    fx.prov[1].api_keys = fx.keys_b;
    fx.prov[1].priority = 5;

    fx.models_c[0] = "claude-x";
    fx.prov[2] = (Llmrelay__Provider)LLMRELAY__PROVIDER__INIT;
    fx.prov[2].name = "gamma";
    fx.prov[2].type = "anthropic";
    fx.prov[2].base_url = "https://example.invalid";
    fx.prov[2].n_models = 1;
    fx.prov[2].models = fx.models_c;
    fx.prov[2].n_api_keys = 1;
    fx.prov[2].api_keys = fx.keys_b;

    fx.snap.n_providers = 3;
    fx.snap.providers = fx.provp;

    fx.allow[0] = "gpt-4o";
    for (int i = 0; i < 300; i++) {
        char secret[32];
        uint8_t raw[32];
        snprintf(secret, sizeof(secret), "sk-test-%d", i);
        hex_of(secret, fx.hashes[i], raw);
        snprintf(fx.ids[i], sizeof(fx.ids[i]), "key_%d", i);
        fx.keys[i] = (Llmrelay__ApiKey)LLMRELAY__API_KEY__INIT;
        fx.keys[i].id = fx.ids[i];
        fx.keys[i].name = "k";
        fx.keys[i].hash = fx.hashes[i];
        fx.keys[i].status = i == 7 ? "revoked" : "active";
        if (i == 9) {
            fx.keys[i].n_models = 1;
            fx.keys[i].models = fx.allow;
        }
        fx.keyp[i] = &fx.keys[i];
    }
    fx.snap.n_keys = 300;
    fx.snap.keys = fx.keyp;
}

static void test_keys(void **state)
{
    (void)state;
    build_fixture();
    snapshot_t *s = snapshot_build(&fx.snap);
    assert_non_null(s);
    assert_int_equal(s->revision, 42);
    assert_int_equal(s->n_keys, 300);
    for (int i = 0; i < 300; i++) {
        char secret[32], hex[65];
        uint8_t raw[32];
        snprintf(secret, sizeof(secret), "sk-test-%d", i);
        hex_of(secret, hex, raw);
        const snapshot_key_t *k = snapshot_find_key(s, raw);
        assert_non_null(k);
        assert_string_equal(k->id, fx.ids[i]);
        assert_int_equal(k->revoked, i == 7);
    }
    uint8_t raw[32];
    char hex[65];
    hex_of("sk-unknown", hex, raw);
    assert_null(snapshot_find_key(s, raw));
    for (int i = 0; i < 300; i++) {
        const snapshot_key_t *k = snapshot_find_key_id(s, fx.ids[i]);
        assert_non_null(k);
        assert_string_equal(k->id, fx.ids[i]);
    }
    assert_null(snapshot_find_key_id(s, "key_missing"));
    snapshot_release(s);
}

static void test_models_and_routes(void **state)
{
    (void)state;
    build_fixture();
    snapshot_t *s = snapshot_build(&fx.snap);
    assert_non_null(s);
    assert_int_equal(s->n_models, 4); /* claude-x, fast, gpt-4o, gpt-4o-mini */
    const snapshot_model_t *m = snapshot_find_model(s, "gpt-4o", 6);
    assert_non_null(m);
    assert_int_equal(m->n_routes, 2);
    assert_string_equal(m->routes[0].provider, "beta"); /* priority 5 first */
    assert_string_equal(m->routes[1].provider, "alpha");
    assert_string_equal(m->routes[1].base_url, "http://127.0.0.1:1/v1"); /* trailing '/' cut */
    assert_int_equal(m->routes[0].weight, 1);                           /* 0 means 1 */
    m = snapshot_find_model(s, "fast", 4);
    assert_non_null(m);
    assert_int_equal(m->n_routes, 1);
    assert_string_equal(m->routes[0].upstream_model, "gpt-4o-mini");
    assert_int_equal(m->routes[0].n_api_keys, 2);
    assert_string_equal(m->routes[0].api_keys[1], "upstream-a2");
    assert_null(snapshot_find_model(s, "gpt-4", 5));
    assert_null(snapshot_find_model(s, "gpt-4o-", 7));
    assert_non_null(snapshot_find_model(s, "gpt-4o-mini-extra", 11));
    m = snapshot_find_model(s, "claude-x", 8);
    assert_non_null(m);
    assert_string_equal(m->routes[0].type, "anthropic");

    uint8_t raw[32];
    char hex[65];
    hex_of("sk-test-9", hex, raw);
    const snapshot_key_t *k = snapshot_find_key(s, raw);
    assert_true(snapshot_key_allows(k, "gpt-4o"));
    assert_false(snapshot_key_allows(k, "fast"));
    hex_of("sk-test-8", hex, raw);
    assert_true(snapshot_key_allows(snapshot_find_key(s, raw), "fast"));
    snapshot_release(s);
}

static void test_refcount_and_empty(void **state)
{
    (void)state;
    Llmrelay__Snapshot empty = LLMRELAY__SNAPSHOT__INIT;
    snapshot_t *s = snapshot_build(&empty);
    assert_non_null(s);
    assert_int_equal(s->n_models, 0);
    uint8_t raw[32] = {0};
    assert_null(snapshot_find_key(s, raw));
    assert_null(snapshot_find_model(s, "x", 1));
    assert_null(snapshot_find_key_id(s, "key_0"));
    snapshot_retain(s);
    snapshot_release(s);
    assert_int_equal(atomic_load(&s->refs), 1);
    snapshot_release(s);
}

static uint64_t tag_of(const char *key)
{
    uint8_t raw[32];
    uint64_t tag = 0;
    SHA256((const unsigned char *)key, strlen(key), raw);
    for (int i = 0; i < 8; i++)
        tag = tag << 8 | raw[i];
    return tag;
}

/* The provider list for the channel tables: sorted by name, one per record, key tags =
 * 64 bits of SHA-256 of each key (a changed key is a new tag). */
static void test_providers(void **state)
{
    (void)state;
    build_fixture();
    /* Out of order in the source: the snapshot sorts them. */
    Llmrelay__Provider *order[3] = {fx.provp[2], fx.provp[0], fx.provp[1]};
    fx.snap.providers = order;
    snapshot_t *s = snapshot_build(&fx.snap);
    assert_non_null(s);
    assert_int_equal(s->n_providers, 3);
    assert_string_equal(s->providers[0].name, "alpha");
    assert_string_equal(s->providers[1].name, "beta");
    assert_string_equal(s->providers[2].name, "gamma");
    assert_string_equal(s->providers[2].type, "anthropic");
    assert_int_equal(s->providers[0].n_api_keys, 2);
    assert_true(s->providers[0].key_tags[0] == tag_of("upstream-a1"));
    assert_true(s->providers[0].key_tags[1] == tag_of("upstream-a2"));
    assert_true(s->providers[0].key_tags[0] != s->providers[0].key_tags[1]);
    assert_true(s->providers[1].key_tags[0] == tag_of("upstream-b"));
    assert_true(s->providers[2].key_tags[0] == tag_of("upstream-b")); /* same key, same tag */
    snapshot_release(s);

    fx.keys_a[1] = "upstream-a2-rotated";
    s = snapshot_build(&fx.snap);
    assert_non_null(s);
    assert_true(s->providers[0].key_tags[0] == tag_of("upstream-a1"));
    assert_true(s->providers[0].key_tags[1] == tag_of("upstream-a2-rotated"));
    snapshot_release(s);

    Llmrelay__Snapshot empty = LLMRELAY__SNAPSHOT__INIT;
    s = snapshot_build(&empty);
    assert_non_null(s);
    assert_int_equal(s->n_providers, 0);
    snapshot_release(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_providers),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_models_and_routes),
        cmocka_unit_test(test_refcount_and_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
