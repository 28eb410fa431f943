/* Tests of secrets: seal/open round trips, a fresh nonce per seal, tampering, wrong key,
 * wrong AAD, malformed tokens, and key files (good, trailing newline, missing, short,
 * long, not base64, empty).
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

#include "cluster/secrets.h"

static char dir[64];

static void key_of(secrets_key_t *k, uint8_t fill)
{
    uint8_t raw[SECRETS_KEY_LEN];
    memset(raw, fill, sizeof(raw));
    raw[0] ^= 0x5a;
    assert_int_equal(secrets_key_set(k, raw, sizeof(raw)), 0);
}

static const char *AAD = "provider:openai:api_key:0";
static const char *SECRET = "sk-test-0123456789abcdefghijklmnop";

static char *seal(const secrets_key_t *k, const char *plain, const char *aad)
{
    char *t = NULL;
    assert_int_equal(secrets_seal(k, (const uint8_t *)plain, strlen(plain), (const uint8_t *)aad, strlen(aad), &t), 0);
    assert_non_null(t);
    return t;
}

static int open_text(const secrets_key_t *k, const char *text, const char *aad, char **out)
{
    uint8_t *p = NULL;
    size_t n = 0;
    int rc = secrets_open(k, text, (const uint8_t *)aad, strlen(aad), &p, &n);
    if (rc == 0) {
        assert_non_null(p);
        assert_int_equal(strlen((char *)p), n); /* NUL-terminated, no inner NUL here */
        *out = (char *)p;
    } else {
        assert_null(p);
        assert_int_equal(n, 0);
    }
    return rc;
}

static void wipe_free(char *p)
{
    if (p != NULL) {
        explicit_bzero(p, strlen(p));
        free(p);
    }
}

static void test_round_trip(void **state)
{
    (void)state;
    secrets_key_t k;
    key_of(&k, 7);
    char *t = seal(&k, SECRET, AAD);
    assert_true(secrets_is_sealed(t));
    assert_memory_equal(t, "enc:v1:", 7);
    assert_null(strstr(t, "sk-test")); /* the plaintext is not in the token */
    /* nonce 12 + plaintext + tag 16, base64 */
    assert_int_equal(strlen(t), 7 + (12 + strlen(SECRET) + 16 + 2) / 3 * 4);
    char *plain = NULL;
    assert_int_equal(open_text(&k, t, AAD, &plain), 0);
    assert_string_equal(plain, SECRET);
    wipe_free(plain);
    free(t);

    /* empty plaintext, empty aad, binary plaintext with a NUL, maximum length */
    t = seal(&k, "", "");
    assert_int_equal(open_text(&k, t, "", &plain), 0);
    assert_string_equal(plain, "");
    wipe_free(plain);
    free(t);

    uint8_t bin[SECRETS_MAX_PLAIN];
    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (uint8_t)(i * 31);
    assert_int_equal(secrets_seal(&k, bin, sizeof(bin), NULL, 0, &t), 0);
    uint8_t *out;
    size_t n;
    assert_int_equal(secrets_open(&k, t, NULL, 0, &out, &n), 0);
    assert_int_equal(n, sizeof(bin));
    assert_memory_equal(out, bin, n);
    assert_int_equal(out[n], 0);
    explicit_bzero(out, n);
    free(out);
    free(t);
    char *none = (char *)1;
    assert_int_equal(secrets_seal(&k, bin, SECRETS_MAX_PLAIN + 1, NULL, 0, &none), -EINVAL);
    assert_null(none);
    secrets_key_dispose(&k);
}

static void test_fresh_nonce(void **state)
{
    (void)state;
    secrets_key_t k;
    key_of(&k, 9);
    char *tokens[16];
    for (int i = 0; i < 16; i++) {
        tokens[i] = seal(&k, SECRET, AAD);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(tokens[i], tokens[j]);
        /* the nonce (first 16 base64 characters after the prefix) differs too */
        for (int j = 0; j < i; j++)
            assert_true(memcmp(tokens[i] + 7, tokens[j] + 7, 16) != 0);
    }
    for (int i = 0; i < 16; i++) {
        char *plain;
        assert_int_equal(open_text(&k, tokens[i], AAD, &plain), 0);
        assert_string_equal(plain, SECRET);
        wipe_free(plain);
        free(tokens[i]);
    }
    secrets_key_dispose(&k);
}

static void test_tamper(void **state)
{
    (void)state;
    secrets_key_t k;
    key_of(&k, 3);
    char *t = seal(&k, SECRET, AAD);
    size_t len = strlen(t);
    /* Change each base64 character in turn (nonce, ciphertext and tag): never opens. */
    for (size_t i = 7; i < len; i++) {
        char *c = strdup(t);
        c[i] = c[i] == 'A' ? 'B' : 'A';
        char *plain = NULL;
        int rc = open_text(&k, c, AAD, &plain);
        /* the last character may carry only padding bits: then the text is not canonical */
        assert_int_equal(rc, -EBADMSG);
        free(c);
    }
    /* truncated, extended, garbage, bad padding */
    char *c = strdup(t);
    c[len - 4] = '\0';
    char *plain = NULL;
    assert_int_equal(open_text(&k, c, AAD, &plain), -EBADMSG);
    free(c);
    size_t cap = len + 8;
    c = malloc(cap);
    snprintf(c, cap, "%sAAAA", t);
    assert_int_equal(open_text(&k, c, AAD, &plain), -EBADMSG);
    free(c);
    assert_int_equal(open_text(&k, "enc:v1:", AAD, &plain), -EBADMSG);
    assert_int_equal(open_text(&k, "enc:v1:AAAA", AAD, &plain), -EBADMSG);
    assert_int_equal(open_text(&k, "enc:v1:!!!!not base64", AAD, &plain), -EBADMSG);
    assert_int_equal(open_text(&k, "enc:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", AAD, &plain), -EBADMSG);
    /* not a token at all: plaintext from before encryption */
    assert_false(secrets_is_sealed("sk-legacy"));
    assert_false(secrets_is_sealed(NULL));
    assert_int_equal(open_text(&k, "sk-legacy", AAD, &plain), -EINVAL);
    free(t);
    secrets_key_dispose(&k);
}

static void test_wrong_key_and_aad(void **state)
{
    (void)state;
    secrets_key_t k1, k2, none;
    key_of(&k1, 1);
    key_of(&k2, 2);
    memset(&none, 0, sizeof(none));
    char *t = seal(&k1, SECRET, AAD);
    char *plain = NULL;
    assert_int_equal(open_text(&k2, t, AAD, &plain), -EBADMSG);
    assert_int_equal(open_text(&k1, t, "provider:openai:api_key:1", &plain), -EBADMSG);
    assert_int_equal(open_text(&k1, t, "provider:other:api_key:0", &plain), -EBADMSG);
    assert_int_equal(open_text(&k1, t, "", &plain), -EBADMSG);
    assert_int_equal(open_text(&none, t, AAD, &plain), -EINVAL);
    char *t2 = (char *)1;
    assert_int_equal(secrets_seal(&none, (const uint8_t *)"x", 1, NULL, 0, &t2), -EINVAL);
    assert_null(t2);
    assert_int_equal(open_text(&k1, t, AAD, &plain), 0);
    wipe_free(plain);
    free(t);
    /* dispose wipes */
    secrets_key_dispose(&k1);
    static const uint8_t zero[sizeof(secrets_key_t)];
    assert_memory_equal(&k1, zero, sizeof(k1));
    assert_false(k1.loaded);
    secrets_key_dispose(&k2);
    secrets_key_dispose(NULL);
}

static void write_file(const char *path, const char *content, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, len, f), len);
    fclose(f);
}

static void test_key_file(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof(path), "%s/key", dir);
    secrets_key_t k;
    /* 32 bytes 0x00..0x1f, base64, with and without the trailing newline */
    const char *good = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    uint8_t want[32];
    for (int i = 0; i < 32; i++)
        want[i] = (uint8_t)i;
    char buf[128];
    snprintf(buf, sizeof(buf), "%s\n", good);
    write_file(path, buf, strlen(buf));
    assert_int_equal(secrets_key_load(path, &k), 0);
    assert_true(k.loaded);
    assert_memory_equal(k.bytes, want, 32);
    secrets_key_dispose(&k);
    write_file(path, good, strlen(good));
    assert_int_equal(secrets_key_load(path, &k), 0);
    assert_memory_equal(k.bytes, want, 32);
    /* a key loaded from a file seals and opens */
    char *t = seal(&k, SECRET, AAD);
    char *plain;
    assert_int_equal(open_text(&k, t, AAD, &plain), 0);
    wipe_free(plain);
    free(t);
    secrets_key_dispose(&k);

    /* what `head -c 32 /dev/urandom | base64` writes */
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "head -c 32 /dev/urandom | base64 > '%s'", path);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(secrets_key_load(path, &k), 0);
    secrets_key_dispose(&k);

    char missing[160];
    snprintf(missing, sizeof(missing), "%s/nope", dir);
    assert_int_equal(secrets_key_load(missing, &k), -ENOENT);
    assert_false(k.loaded);
    assert_non_null(strstr(secrets_key_error(-ENOENT), "not found"));
    /* 16 bytes: short */
    write_file(path, "AAECAwQFBgcICQoLDA0ODw==\n", 25);
    assert_int_equal(secrets_key_load(path, &k), -EINVAL);
    assert_false(k.loaded);
    assert_non_null(strstr(secrets_key_error(-EINVAL), "32 bytes"));
    /* 33 bytes: long */
    write_file(path, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g\n", 45);
    assert_int_equal(secrets_key_load(path, &k), -EINVAL);
    /* empty */
    write_file(path, "\n", 1);
    assert_int_equal(secrets_key_load(path, &k), -EINVAL);
    /* not base64 */
    write_file(path, "this is not a key, it is a sentence!!\n", 38);
    assert_int_equal(secrets_key_load(path, &k), -EILSEQ);
    assert_false(k.loaded);
    assert_non_null(strstr(secrets_key_error(-EILSEQ), "base64"));
    write_file(path, "AAECAwQFBgcICQoLDA0O\nDxAREhMUFRYXGBkaGxwdHh8=\n", 46); /* inner newline */
    assert_int_equal(secrets_key_load(path, &k), -EILSEQ);
    /* far too large */
    static char big[4096];
    memset(big, 'A', sizeof(big));
    write_file(path, big, sizeof(big));
    assert_int_equal(secrets_key_load(path, &k), -EFBIG);
    /* a directory is not a key file */
    assert_true(secrets_key_load(dir, &k) < 0);
    assert_false(k.loaded);
    unlink(path);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/llmrelay-sec-XXXXXX");
    return mkdtemp(dir) == NULL ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    return rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),        cmocka_unit_test(test_fresh_nonce), cmocka_unit_test(test_tamper),
        cmocka_unit_test(test_wrong_key_and_aad), cmocka_unit_test(test_key_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
