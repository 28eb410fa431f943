/* Tests of pushpull_seal: hello round trip and bad magic, the derived key against OpenSSL's
 * own HKDF, frame round trips in both directions, a recorded request replayed on a new
 * connection (another server nonce) failing as forged, bit flips everywhere, the other
 * direction's frame refused, declared lengths over the bound refused before buffering. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/kdf.h>

#include "cluster/pushpull_seal.h"

static uint8_t ck[32], ck2[32], sn[16], sn2[16], cn[16];

static void fill(uint8_t *p, size_t n, uint8_t base)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(base + i * 7);
}

static void test_hello(void **state)
{
    (void)state;
    uint8_t h[PUSHPULL_HELLO_LEN], got[16];
    pushpull_hello(sn, h);
    assert_int_equal(pushpull_hello_parse(h, got), 0);
    assert_memory_equal(got, sn, 16);
    h[0] = 'X';
    assert_int_equal(pushpull_hello_parse(h, got), -EPROTO);
    pushpull_hello(sn, h);
    h[4] = 9;
    assert_int_equal(pushpull_hello_parse(h, got), -EPROTO);
}

static void test_derive_matches_openssl(void **state)
{
    (void)state;
    uint8_t k[32], ref[32];
    assert_int_equal(pushpull_derive(ck, 32, sn, cn, k), 0);
    uint8_t info[sizeof(PUSHPULL_SEAL_LABEL) - 1 + 32];
    memcpy(info, PUSHPULL_SEAL_LABEL, sizeof(PUSHPULL_SEAL_LABEL) - 1);
    memcpy(info + sizeof(PUSHPULL_SEAL_LABEL) - 1, sn, 16);
    memcpy(info + sizeof(PUSHPULL_SEAL_LABEL) - 1 + 16, cn, 16);
    EVP_PKEY_CTX *p = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    size_t outlen = sizeof(ref);
    assert_non_null(p);
    assert_int_equal(EVP_PKEY_derive_init(p), 1);
    assert_int_equal(EVP_PKEY_CTX_set_hkdf_md(p, EVP_sha256()), 1);
    assert_int_equal(EVP_PKEY_CTX_set1_hkdf_key(p, ck, 32), 1);
    assert_int_equal(EVP_PKEY_CTX_add1_hkdf_info(p, info, (int)sizeof(info)), 1);
    assert_int_equal(EVP_PKEY_derive(p, ref, &outlen), 1);
    EVP_PKEY_CTX_free(p);
    assert_memory_equal(k, ref, 32);
    assert_int_equal(pushpull_derive(ck, 31, sn, cn, k), -EINVAL);
}

static void test_round_trip_and_tamper(void **state)
{
    (void)state;
    uint8_t k[32];
    assert_int_equal(pushpull_derive(ck, 32, sn, cn, k), 0);
    size_t n = 5000;
    uint8_t *plain = malloc(n), *frame = malloc(n + PUSHPULL_OVERHEAD), *out = malloc(n);
    fill(plain, n, 3);
    size_t flen = 0, olen = 0;
    assert_int_equal(pushpull_seal(k, PUSHPULL_DIR_REQUEST, plain, n, frame, n + PUSHPULL_OVERHEAD, &flen), 0);
    assert_int_equal(flen, n + PUSHPULL_OVERHEAD);
    assert_int_equal(pushpull_frame_len(frame, 3, PUSHPULL_MAX_PLAIN), 0);
    assert_int_equal(pushpull_frame_len(frame, 5, PUSHPULL_MAX_PLAIN), (long)flen);
    assert_int_equal(pushpull_open(k, PUSHPULL_DIR_REQUEST, frame, flen, out, n, &olen), 0);
    assert_int_equal(olen, n);
    assert_memory_equal(out, plain, n);
    /* the other direction's nonce: refused */
    assert_int_equal(pushpull_open(k, PUSHPULL_DIR_REPLY, frame, flen, out, n, &olen), -EBADMSG);
    /* every bit of header, some of the ciphertext, every bit of the tag */
    for (size_t i = 0; i < flen; i += (i < 8 || i >= flen - 16) ? 1 : 97)
        for (int b = 0; b < 8; b++) {
            frame[i] ^= (uint8_t)(1u << b);
            int rc = pushpull_open(k, PUSHPULL_DIR_REQUEST, frame, flen, out, n, &olen);
            assert_true(rc == -EBADMSG || rc == -EPROTO);
            frame[i] ^= (uint8_t)(1u << b);
        }
    /* replay on another connection (new server nonce) or another cluster key: forged */
    uint8_t k2[32], k3[32];
    assert_int_equal(pushpull_derive(ck, 32, sn2, cn, k2), 0);
    assert_int_equal(pushpull_open(k2, PUSHPULL_DIR_REQUEST, frame, flen, out, n, &olen), -EBADMSG);
    assert_int_equal(pushpull_derive(ck2, 32, sn, cn, k3), 0);
    assert_int_equal(pushpull_open(k3, PUSHPULL_DIR_REQUEST, frame, flen, out, n, &olen), -EBADMSG);
    /* truncated, extended */
    assert_int_equal(pushpull_open(k, PUSHPULL_DIR_REQUEST, frame, flen - 1, out, n, &olen), -EPROTO);
    assert_int_equal(pushpull_seal(k, PUSHPULL_DIR_REPLY, plain, n, frame, n, &flen), -ENOBUFS);
    /* empty state */
    assert_int_equal(pushpull_seal(k, PUSHPULL_DIR_REPLY, NULL, 0, frame, PUSHPULL_OVERHEAD, &flen), 0);
    assert_int_equal(pushpull_open(k, PUSHPULL_DIR_REPLY, frame, flen, NULL, 0, &olen), 0);
    assert_int_equal(olen, 0);
    free(plain);
    free(frame);
    free(out);
}

static void test_bounds(void **state)
{
    (void)state;
    uint8_t h[5] = {PUSHPULL_VERSION, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(pushpull_frame_len(h, 5, PUSHPULL_MAX_PLAIN), -EMSGSIZE);
    h[1] = 0;
    h[2] = 0;
    h[3] = 0x10;
    h[4] = 0; /* 4096 */
    assert_int_equal(pushpull_frame_len(h, 5, 4095), -EMSGSIZE);
    assert_int_equal(pushpull_frame_len(h, 5, 4096), 4096 + PUSHPULL_OVERHEAD);
    h[0] = 2;
    assert_int_equal(pushpull_frame_len(h, 5, 4096), -EPROTO);
    uint8_t k[32] = {0};
    size_t l;
    assert_int_equal(pushpull_seal(k, 1, NULL, PUSHPULL_MAX_PLAIN + 1, NULL, 0, &l), -EMSGSIZE);
}

int main(void)
{
    fill(ck, 32, 1);
    fill(ck2, 32, 2);
    fill(sn, 16, 50);
    fill(sn2, 16, 51);
    fill(cn, 16, 90);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello),
        cmocka_unit_test(test_derive_matches_openssl),
        cmocka_unit_test(test_round_trip_and_tamper),
        cmocka_unit_test(test_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
