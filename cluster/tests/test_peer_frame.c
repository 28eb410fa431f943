/* Tests of peer_frame: round trips (empty, in place, the 4 MiB maximum), the wire format
 * against an independent computation (OpenSSL's HKDF, SHA-256 and HMAC), single-bit flips
 * everywhere, another cluster key, the time window, replays and the seq window (out of
 * order, too old, its edge, gaps), the LRU bound and expiry, malformed lengths (exact-size
 * heap buffers, so ASan sees any over-read), argument errors, the version rule with a
 * PeerEnvelope of another major carrying unknown fields; then a seal+open micro-benchmark.
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
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>

#include "cluster/peer_frame.h"
#include "peer.pb-c.h"

#define T0 1700000000000ULL /* a plausible unix ms */

static uint8_t KEY[PEER_FRAME_KEY_LEN];
static uint8_t OTHER_KEY[PEER_FRAME_KEY_LEN];

static void keys_init(void)
{
    for (int i = 0; i < PEER_FRAME_KEY_LEN; i++) {
        KEY[i] = (uint8_t)(i * 7 + 1);
        OTHER_KEY[i] = (uint8_t)(i * 7 + 2);
    }
}

static peer_frame_t *make(const uint8_t *key, uint64_t boot_id, uint32_t max_senders)
{
    peer_frame_config_t cfg = {.time_window_ms = 0, .max_senders = max_senders};
    peer_frame_t *ctx = NULL;
    assert_int_equal(peer_frame_create(key, PEER_FRAME_KEY_LEN, boot_id, &cfg, &ctx), 0);
    assert_non_null(ctx);
    return ctx;
}

/* Seals into a fresh exact-size heap buffer the caller frees. */
static uint8_t *seal(peer_frame_t *ctx, uint64_t now_ms, const void *payload, size_t len, size_t *frame_len)
{
    uint8_t *out = malloc(len + PEER_FRAME_OVERHEAD);
    assert_non_null(out);
    assert_int_equal(peer_frame_seal(ctx, now_ms, payload, len, out, len + PEER_FRAME_OVERHEAD, frame_len), 0);
    assert_int_equal(*frame_len, len + PEER_FRAME_OVERHEAD);
    return out;
}

/* Opens frame[0..len) from an exact-size heap copy. */
static int open_copy(peer_frame_t *ctx, const uint8_t *frame, size_t len, uint64_t now_ms, peer_frame_reason_t *why)
{
    uint8_t *copy = malloc(len > 0 ? len : 1);
    assert_non_null(copy);
    if (len > 0)
        memcpy(copy, frame, len);
    int rc = peer_frame_open(ctx, len > 0 ? copy : NULL, len, now_ms, NULL, why);
    free(copy);
    return rc;
}

static peer_frame_stats_t stats_of(const peer_frame_t *ctx)
{
    peer_frame_stats_t st;
    peer_frame_get_stats(ctx, &st);
    return st;
}

static void test_round_trip(void **state)
{
    (void)state;
    peer_frame_t *a = make(KEY, 0xA1, 0), *b = make(KEY, 0xB2, 0);
    const char msg[] = "settle batch bytes";
    size_t n = 0;
    uint8_t *f = seal(a, T0, msg, sizeof(msg), &n);
    peer_frame_info_t info;
    peer_frame_reason_t why = PEER_FRAME_FORGED;
    assert_int_equal(peer_frame_open(b, f, n, T0 + 5, &info, &why), 0);
    assert_int_equal(why, PEER_FRAME_OK);
    assert_int_equal(info.boot_id, 0xA1);
    assert_int_equal(info.sent_ms, T0);
    assert_int_equal(info.seq, 1);
    assert_int_equal(info.payload_len, sizeof(msg));
    assert_ptr_equal(info.payload, f + PEER_FRAME_HEADER_LEN);
    assert_memory_equal(info.payload, msg, sizeof(msg));
    free(f);

    /* empty payload; seq moves on */
    f = seal(a, T0 + 1, NULL, 0, &n);
    assert_int_equal(n, PEER_FRAME_OVERHEAD);
    assert_int_equal(peer_frame_open(b, f, n, T0, &info, NULL), 0);
    assert_int_equal(info.seq, 2);
    assert_int_equal(info.payload_len, 0);
    free(f);

    /* in place: the payload already sits after the header */
    uint8_t buf[PEER_FRAME_OVERHEAD + 100];
    memset(buf + PEER_FRAME_HEADER_LEN, 0x5a, 100);
    assert_int_equal(peer_frame_seal(a, T0, buf + PEER_FRAME_HEADER_LEN, 100, buf, sizeof(buf), &n), 0);
    assert_int_equal(peer_frame_open(b, buf, n, T0, &info, NULL), 0);
    assert_int_equal(info.payload_len, 100);
    for (size_t i = 0; i < 100; i++)
        assert_int_equal(info.payload[i], 0x5a);

    /* the maximum payload */
    uint8_t *big = malloc(PEER_FRAME_MAX_PAYLOAD);
    assert_non_null(big);
    for (size_t i = 0; i < PEER_FRAME_MAX_PAYLOAD; i++)
        big[i] = (uint8_t)(i * 31);
    f = seal(a, T0, big, PEER_FRAME_MAX_PAYLOAD, &n);
    assert_int_equal(n, PEER_FRAME_MAX_FRAME);
    assert_int_equal(peer_frame_open(b, f, n, T0, &info, NULL), 0);
    assert_memory_equal(info.payload, big, PEER_FRAME_MAX_PAYLOAD);
    free(f);
    free(big);

    /* the same sender context opens its own frames too (a node talking to itself) */
    f = seal(b, T0, msg, 4, &n);
    assert_int_equal(peer_frame_open(b, f, n, T0, &info, NULL), 0);
    assert_int_equal(info.boot_id, 0xB2);
    free(f);

    peer_frame_stats_t st = stats_of(b);
    assert_int_equal(st.opened, 5);
    assert_int_equal(st.senders, 2);
    assert_int_equal(stats_of(a).sealed, 4);
    assert_int_equal(peer_frame_seq(a), 4);
    assert_int_equal(peer_frame_boot_id(a), 0xA1);
    peer_frame_free(a);
    peer_frame_free(b);
}

/* The wire format, recomputed with OpenSSL's own HKDF rather than the module's. */
static void test_wire_format(void **state)
{
    (void)state;
    uint8_t mac_key[32];
    EVP_PKEY_CTX *kdf = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    assert_non_null(kdf);
    size_t mac_key_len = sizeof(mac_key);
    assert_int_equal(EVP_PKEY_derive_init(kdf), 1);
    assert_int_equal(EVP_PKEY_CTX_set_hkdf_md(kdf, EVP_sha256()), 1);
    assert_int_equal(EVP_PKEY_CTX_set1_hkdf_key(kdf, KEY, sizeof(KEY)), 1);
    assert_int_equal(
        EVP_PKEY_CTX_add1_hkdf_info(kdf, (const unsigned char *)PEER_FRAME_LABEL, (int)strlen(PEER_FRAME_LABEL)), 1);
    assert_int_equal(EVP_PKEY_derive(kdf, mac_key, &mac_key_len), 1);
    EVP_PKEY_CTX_free(kdf);
    uint8_t digest[32];
    unsigned int dlen = 0;
    assert_int_equal(EVP_Digest(mac_key, sizeof(mac_key), digest, &dlen, EVP_sha256(), NULL), 1);

    peer_frame_t *a = make(KEY, 0x0102030405060708ULL, 0);
    uint8_t kid[PEER_FRAME_KEY_ID_LEN];
    peer_frame_key_id(a, kid);
    assert_memory_equal(kid, digest, PEER_FRAME_KEY_ID_LEN);

    const uint8_t payload[3] = {0xaa, 0xbb, 0xcc};
    size_t n = 0;
    uint8_t *f = seal(a, 0x1122334455667788ULL, payload, sizeof(payload), &n);
    const uint8_t header[PEER_FRAME_HEADER_LEN] = {
        'L',       'R',       'P',       'F',       1,         0,         0,         0,         /* magic, version */
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7], /* key id */
        1,         2,         3,         4,         5,         6,         7,         8,         /* boot id */
        0x11,      0x22,      0x33,      0x44,      0x55,      0x66,      0x77,      0x88,      /* sent_ms */
        0,         0,         0,         0,         0,         0,         0,         1,         /* seq */
        0,         0,         0,         3};                                                    /* length */
    assert_memory_equal(f, header, sizeof(header));
    assert_memory_equal(f + PEER_FRAME_HEADER_LEN, payload, sizeof(payload));
    uint8_t mac[32];
    unsigned int mlen = 0;
    assert_non_null(HMAC(EVP_sha256(), mac_key, sizeof(mac_key), f, PEER_FRAME_HEADER_LEN + 3, mac, &mlen));
    assert_memory_equal(f + PEER_FRAME_HEADER_LEN + 3, mac, 32);
    free(f);
    peer_frame_free(a);
}

static void test_bit_flips(void **state)
{
    (void)state;
    peer_frame_t *a = make(KEY, 0xA1, 0), *b = make(KEY, 0xB2, 0);
    uint8_t payload[64];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)i;
    size_t n = 0;
    uint8_t *f = seal(a, T0, payload, sizeof(payload), &n);
    size_t refused = 0;
    for (size_t bit = 0; bit < n * 8; bit++) {
        f[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        peer_frame_reason_t why = PEER_FRAME_OK;
        int rc = open_copy(b, f, n, T0, &why);
        assert_true(rc < 0);
        assert_int_not_equal(why, PEER_FRAME_OK);
        /* the MAC covers the seq and time: only the HMAC or a structural check can refuse */
        assert_true(why != PEER_FRAME_REPLAYED && why != PEER_FRAME_TOO_OLD && why != PEER_FRAME_TIME_SKEW);
        refused++;
        f[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    peer_frame_stats_t st = stats_of(b);
    assert_int_equal(st.opened, 0);
    assert_int_equal(st.senders, 0); /* nothing unauthenticated touched the replay table */
    uint64_t total = 0;
    for (int r = 0; r < PEER_FRAME_REASON_COUNT; r++)
        total += st.refused[r];
    assert_int_equal(total, refused);
    assert_int_equal(st.refused[PEER_FRAME_BAD_MAGIC], 32);
    assert_int_equal(st.refused[PEER_FRAME_BAD_VERSION], 8);
    assert_int_equal(st.refused[PEER_FRAME_WRONG_KEY], 64);
    assert_int_equal(st.refused[PEER_FRAME_FORGED], 8 * (8 + 8 + 8 + sizeof(payload) + PEER_FRAME_MAC_LEN));
    /* reserved (24 bits) and length (32 bits; flipping bit 22 or above exceeds the 4 MiB cap) */
    assert_int_equal(st.refused[PEER_FRAME_MALFORMED], 24 + 22);
    assert_int_equal(st.refused[PEER_FRAME_TOO_LARGE], 10);
    /* the untouched frame still opens */
    assert_int_equal(open_copy(b, f, n, T0, NULL), 0);
    free(f);
    peer_frame_free(a);
    peer_frame_free(b);
}

static void test_other_key(void **state)
{
    (void)state;
    peer_frame_t *a = make(OTHER_KEY, 0xA1, 0), *b = make(KEY, 0xB2, 0);
    size_t n = 0;
    uint8_t *f = seal(a, T0, "x", 1, &n);
    peer_frame_reason_t why = PEER_FRAME_OK;
    assert_int_equal(open_copy(b, f, n, T0, &why), -EKEYREJECTED);
    assert_int_equal(why, PEER_FRAME_WRONG_KEY);
    assert_string_equal(peer_frame_reason_name(why), "wrong_key_id");
    assert_int_equal(stats_of(b).refused[PEER_FRAME_WRONG_KEY], 1);
    /* a forger who copies our key id but not the key: bad HMAC */
    uint8_t kid[PEER_FRAME_KEY_ID_LEN];
    peer_frame_key_id(b, kid);
    memcpy(f + 8, kid, sizeof(kid));
    assert_int_equal(open_copy(b, f, n, T0, &why), -EBADMSG);
    assert_int_equal(why, PEER_FRAME_FORGED);
    free(f);
    peer_frame_free(a);
    peer_frame_free(b);
}

static void test_time_window(void **state)
{
    (void)state;
    peer_frame_t *a = make(KEY, 0xA1, 0), *b = make(KEY, 0xB2, 0);
    const uint64_t w = PEER_FRAME_DEFAULT_TIME_WINDOW_MS;
    size_t n = 0;
    peer_frame_reason_t why;
    uint8_t *f = seal(a, T0, "x", 1, &n);
    assert_int_equal(open_copy(b, f, n, T0 + w + 1, &why), -ETIME); /* too old */
    assert_int_equal(why, PEER_FRAME_TIME_SKEW);
    assert_int_equal(open_copy(b, f, n, T0 - w - 1, &why), -ETIME); /* from the future */
    assert_int_equal(open_copy(b, f, n, T0 + w, &why), 0);          /* edge included */
    free(f);
    f = seal(a, T0, "x", 1, &n);
    assert_int_equal(open_copy(b, f, n, T0 - w, &why), 0);
    free(f);
    /* a sender clock near 0 / the max does not wrap */
    f = seal(a, 0, "x", 1, &n);
    assert_int_equal(open_copy(b, f, n, T0, &why), -ETIME);
    free(f);
    f = seal(a, UINT64_MAX, "x", 1, &n);
    assert_int_equal(open_copy(b, f, n, T0, &why), -ETIME);
    free(f);
    assert_int_equal(stats_of(b).refused[PEER_FRAME_TIME_SKEW], 4);
    peer_frame_free(a);
    peer_frame_free(b);
}

static void test_replay(void **state)
{
    (void)state;
    peer_frame_t *a = make(KEY, 0xA1, 0), *b = make(KEY, 0xB2, 0);
    enum { N = PEER_FRAME_WINDOW + 200 };
    uint8_t **frames = calloc(N + 1, sizeof(uint8_t *));
    size_t *lens = calloc(N + 1, sizeof(size_t));
    assert_non_null(frames);
    assert_non_null(lens);
    for (size_t s = 1; s <= N; s++)
        frames[s] = seal(a, T0, &s, sizeof(s), &lens[s]);
    peer_frame_reason_t why;

    assert_int_equal(open_copy(b, frames[5], lens[5], T0, &why), 0);
    assert_int_equal(open_copy(b, frames[5], lens[5], T0, &why), -EALREADY);
    assert_int_equal(why, PEER_FRAME_REPLAYED);
    /* out of order within the window, and gaps */
    assert_int_equal(open_copy(b, frames[3], lens[3], T0, &why), 0);
    assert_int_equal(open_copy(b, frames[3], lens[3], T0, &why), -EALREADY);
    assert_int_equal(open_copy(b, frames[100], lens[100], T0, &why), 0);
    assert_int_equal(open_copy(b, frames[4], lens[4], T0, &why), 0);
    assert_int_equal(open_copy(b, frames[5], lens[5], T0, &why), -EALREADY);
    /* top = 100 + WINDOW: seq 101 is the lowest still in the window, 100 already accepted */
    size_t top = 100 + PEER_FRAME_WINDOW;
    assert_int_equal(open_copy(b, frames[top], lens[top], T0, &why), 0);
    assert_int_equal(open_copy(b, frames[100], lens[100], T0, &why), -ESTALE);
    assert_int_equal(why, PEER_FRAME_TOO_OLD);
    assert_int_equal(open_copy(b, frames[101], lens[101], T0, &why), 0);
    assert_int_equal(open_copy(b, frames[101], lens[101], T0, &why), -EALREADY);
    assert_int_equal(open_copy(b, frames[6], lens[6], T0, &why), -ESTALE);
    /* every seq in the window is accepted exactly once, in descending order */
    for (size_t s = top - 1; s > 101; s--)
        assert_int_equal(open_copy(b, frames[s], lens[s], T0, &why), 0);
    for (size_t s = 101; s <= top; s++)
        assert_int_equal(open_copy(b, frames[s], lens[s], T0, &why), -EALREADY);
    /* ascending the rest, then all of them once more */
    for (size_t s = top + 1; s <= N; s++)
        assert_int_equal(open_copy(b, frames[s], lens[s], T0, &why), 0);
    for (size_t s = 1; s <= N; s++)
        assert_true(open_copy(b, frames[s], lens[s], T0, &why) < 0);
    /* a jump of more than the whole ring clears it: nothing old comes back */
    peer_frame_t *c = make(KEY, 0xC3, 0);
    size_t n = 0;
    uint8_t *first = seal(c, T0, "a", 1, &n);
    assert_int_equal(open_copy(b, first, n, T0, &why), 0);
    for (int i = 0; i < 5000; i++) {
        uint8_t scratch[PEER_FRAME_OVERHEAD + 1];
        size_t m = 0;
        assert_int_equal(peer_frame_seal(c, T0, (const uint8_t *)"b", 1, scratch, sizeof(scratch), &m), 0);
    }
    uint8_t *later = seal(c, T0, "c", 1, &n);
    assert_int_equal(open_copy(b, later, n, T0, &why), 0);
    assert_int_equal(open_copy(b, later, n, T0, &why), -EALREADY);
    assert_int_equal(open_copy(b, first, n, T0, &why), -ESTALE);
    free(first);
    free(later);
    peer_frame_free(c);

    for (size_t s = 1; s <= N; s++)
        free(frames[s]);
    free(frames);
    free(lens);
    peer_frame_free(a);
    peer_frame_free(b);
}

/* Independent senders, the LRU bound, and expiry by time. */
static void test_senders_bound(void **state)
{
    (void)state;
    peer_frame_t *b = make(KEY, 0xB0, 4);
    const uint64_t w = PEER_FRAME_DEFAULT_TIME_WINDOW_MS;
    uint8_t *first[10];
    size_t lens[10];
    for (int i = 0; i < 10; i++) {
        peer_frame_t *a = make(KEY, 0x100 + (uint64_t)i, 0);
        first[i] = seal(a, T0, "x", 1, &lens[i]);
        peer_frame_free(a);
    }
    for (int i = 0; i < 4; i++)
        assert_int_equal(open_copy(b, first[i], lens[i], T0, NULL), 0);
    assert_int_equal(stats_of(b).senders, 4);
    /* a fifth, still within the time window: evicts the least recently used (sender 0) */
    assert_int_equal(open_copy(b, first[4], lens[4], T0, NULL), 0);
    peer_frame_stats_t st = stats_of(b);
    assert_int_equal(st.senders, 4);
    assert_int_equal(st.evicted, 1);
    /* sender 1 is still known */
    assert_int_equal(open_copy(b, first[1], lens[1], T0, NULL), -EALREADY);
    /* past the time window, all of them are refused by time, and entries expire safely */
    assert_int_equal(open_copy(b, first[0], lens[0], T0 + w + 1, NULL), -ETIME);
    assert_int_equal(peer_frame_expire(b, T0 + w), 0);
    assert_int_equal(peer_frame_expire(b, T0 + w + 1), 4);
    st = stats_of(b);
    assert_int_equal(st.senders, 0);
    assert_int_equal(st.expired, 4);
    /* a full table of aged entries: replacing one counts as expired, not evicted */
    peer_frame_t *a = make(KEY, 0x200, 0);
    for (int i = 0; i < 4; i++) {
        peer_frame_t *s = make(KEY, 0x300 + (uint64_t)i, 0);
        size_t n = 0;
        uint8_t *f = seal(s, T0, "x", 1, &n);
        assert_int_equal(open_copy(b, f, n, T0, NULL), 0);
        free(f);
        peer_frame_free(s);
    }
    size_t n = 0;
    uint8_t *f = seal(a, T0 + 2 * w, "x", 1, &n);
    assert_int_equal(open_copy(b, f, n, T0 + 2 * w, NULL), 0);
    st = stats_of(b);
    assert_int_equal(st.evicted, 1);
    assert_int_equal(st.expired, 5);
    assert_int_equal(st.senders, 4);
    free(f);
    peer_frame_free(a);
    for (int i = 0; i < 10; i++)
        free(first[i]);
    peer_frame_free(b);
}

static void test_malformed(void **state)
{
    (void)state;
    peer_frame_t *a = make(KEY, 0xA1, 0), *b = make(KEY, 0xB2, 0);
    size_t n = 0;
    uint8_t *f = seal(a, T0, "0123456789", 10, &n);
    peer_frame_reason_t why;
    /* every truncation */
    for (size_t len = 0; len < n; len++) {
        assert_true(open_copy(b, f, len, T0, &why) < 0);
        assert_true(why == PEER_FRAME_MALFORMED);
    }
    /* one byte more */
    uint8_t *longer = malloc(n + 1);
    assert_non_null(longer);
    memcpy(longer, f, n);
    longer[n] = 0;
    assert_int_equal(open_copy(b, longer, n + 1, T0, &why), -EPROTO);
    assert_int_equal(why, PEER_FRAME_MALFORMED);
    free(longer);
    /* length field says more or less than the body holds, or beyond the cap */
    uint8_t *bad = malloc(n);
    assert_non_null(bad);
    const uint32_t lengths[] = {0, 9, 11, 1000, UINT32_MAX, (uint32_t)PEER_FRAME_MAX_PAYLOAD + 1};
    for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
        memcpy(bad, f, n);
        bad[40] = (uint8_t)(lengths[i] >> 24);
        bad[41] = (uint8_t)(lengths[i] >> 16);
        bad[42] = (uint8_t)(lengths[i] >> 8);
        bad[43] = (uint8_t)lengths[i];
        int rc = open_copy(b, bad, n, T0, &why);
        if (lengths[i] > PEER_FRAME_MAX_PAYLOAD) {
            assert_int_equal(rc, -EMSGSIZE);
            assert_int_equal(why, PEER_FRAME_TOO_LARGE);
        } else {
            assert_int_equal(rc, -EPROTO);
            assert_int_equal(why, PEER_FRAME_MALFORMED);
        }
    }
    /* short bodies that are not frames at all */
    assert_int_equal(open_copy(b, (const uint8_t *)"GET / HTTP/1.1", 14, T0, &why), -EPROTO);
    assert_int_equal(why, PEER_FRAME_BAD_MAGIC);
    memcpy(bad, f, n);
    bad[4] = 2;
    assert_int_equal(open_copy(b, bad, n, T0, &why), -EPROTO);
    assert_int_equal(why, PEER_FRAME_BAD_VERSION);
    memcpy(bad, f, n);
    bad[6] = 1;
    assert_int_equal(open_copy(b, bad, n, T0, &why), -EPROTO);
    assert_int_equal(why, PEER_FRAME_MALFORMED);
    free(bad);
    assert_int_equal(stats_of(b).opened, 0);
    assert_int_equal(open_copy(b, f, n, T0, &why), 0);
    free(f);
    peer_frame_free(a);
    peer_frame_free(b);
}

static void test_arguments(void **state)
{
    (void)state;
    peer_frame_t *ctx = NULL;
    assert_int_equal(peer_frame_create(KEY, 31, 1, NULL, &ctx), -EINVAL);
    assert_null(ctx);
    assert_int_equal(peer_frame_create(NULL, 32, 1, NULL, &ctx), -EINVAL);
    peer_frame_config_t cfg = {.time_window_ms = 0, .max_senders = (1u << 20) + 1};
    assert_int_equal(peer_frame_create(KEY, 32, 1, &cfg, &ctx), -EINVAL);
    assert_int_equal(peer_frame_create(KEY, 32, 1, NULL, NULL), -EINVAL);
    ctx = make(KEY, 1, 0);
    uint8_t out[PEER_FRAME_OVERHEAD + 8];
    size_t n = 99;
    assert_int_equal(peer_frame_seal(ctx, T0, (const uint8_t *)"12345678", 8, out, sizeof(out) - 1, &n), -ENOBUFS);
    assert_int_equal(n, 0);
    assert_int_equal(peer_frame_seal(ctx, T0, NULL, 8, out, sizeof(out), &n), -EINVAL);
    assert_int_equal(peer_frame_seal(ctx, T0, out, PEER_FRAME_MAX_PAYLOAD + 1, out, SIZE_MAX, &n), -EMSGSIZE);
    assert_int_equal(peer_frame_seal(ctx, T0, NULL, 0, out, sizeof(out), NULL), -EINVAL);
    assert_int_equal(peer_frame_open(ctx, NULL, 5, T0, NULL, NULL), -EINVAL);
    assert_int_equal(peer_frame_seq(ctx), 0);
    /* a custom time window */
    peer_frame_t *rx = NULL;
    cfg.max_senders = 0;
    cfg.time_window_ms = 100;
    assert_int_equal(peer_frame_create(KEY, 32, 2, &cfg, &rx), 0);
    assert_int_equal(peer_frame_seal(ctx, T0, NULL, 0, out, sizeof(out), &n), 0);
    assert_int_equal(peer_frame_open(rx, out, n, T0 + 101, NULL, NULL), -ETIME);
    assert_int_equal(peer_frame_open(rx, out, n, T0 + 100, NULL, NULL), 0);
    assert_string_equal(peer_frame_reason_name(PEER_FRAME_REASON_COUNT), "unknown");
    peer_frame_free(rx);
    peer_frame_free(ctx);
    peer_frame_free(NULL);
}

/* The version rule, on a real PeerEnvelope from a "newer" peer that also carries a field
 * this build does not know: parsing skips the field, the major decides. */
static void test_version(void **state)
{
    (void)state;
    char why[200];
    assert_true(peer_version_compatible(1, 1, why, sizeof(why)));
    assert_false(peer_version_compatible(1, 2, why, sizeof(why)));
    assert_non_null(strstr(why, "major version 2"));
    assert_non_null(strstr(why, "refused"));
    assert_false(peer_version_compatible(2, 1, why, sizeof(why)));
    assert_false(peer_version_compatible(1, 0, why, sizeof(why)));
    assert_non_null(strstr(why, "no protocol version"));
    assert_false(peer_version_compatible(1, 2, NULL, 0));
    char tiny[8];
    assert_false(peer_version_compatible(1, 2, tiny, sizeof(tiny)));
    assert_int_equal(strlen(tiny), sizeof(tiny) - 1);

    Llmrelay__PeerEnvelope env = LLMRELAY__PEER_ENVELOPE__INIT;
    env.version_major = PEER_PROTO_VERSION_MAJOR + 1;
    env.version_minor = 7;
    env.sender = "node-b";
    env.boot_id = 42;
    Llmrelay__PeerMessage msg = LLMRELAY__PEER_MESSAGE__INIT;
    Llmrelay__SettleAck ack = LLMRELAY__SETTLE_ACK__INIT;
    uint64_t held[] = {1001, 1002};
    ack.n_held = 2;
    ack.held = held;
    msg.key_id = "key-1";
    msg.body_case = LLMRELAY__PEER_MESSAGE__BODY_SETTLE_ACK;
    msg.settle_ack = &ack;
    Llmrelay__PeerMessage *msgs[] = {&msg};
    env.n_messages = 1;
    env.messages = msgs;
    size_t packed_len = llmrelay__peer_envelope__get_packed_size(&env);
    /* + an unknown field 1000 (varint 5) and an unknown message type 77 inside the message */
    uint8_t buf[256];
    assert_true(packed_len + 16 < sizeof(buf));
    llmrelay__peer_envelope__pack(&env, buf);
    size_t len = packed_len;
    buf[len++] = 0xc0; /* tag (1000 << 3 | 0) as varint: 0xc0 0x3e */
    buf[len++] = 0x3e;
    buf[len++] = 0x05;

    Llmrelay__PeerEnvelope *got = llmrelay__peer_envelope__unpack(NULL, len, buf);
    assert_non_null(got);
    assert_int_equal(got->version_major, PEER_PROTO_VERSION_MAJOR + 1);
    assert_int_equal(got->n_messages, 1);
    assert_int_equal(got->messages[0]->body_case, LLMRELAY__PEER_MESSAGE__BODY_SETTLE_ACK);
    assert_int_equal(got->messages[0]->settle_ack->held[1], 1002);
    assert_false(peer_version_compatible(PEER_PROTO_VERSION_MAJOR, got->version_major, why, sizeof(why)));
    llmrelay__peer_envelope__free_unpacked(got, NULL);

    /* same major, newer minor, a message body type this build does not know: accepted, no body */
    Llmrelay__PeerEnvelope env2 = LLMRELAY__PEER_ENVELOPE__INIT;
    env2.version_major = PEER_PROTO_VERSION_MAJOR;
    env2.version_minor = PEER_PROTO_VERSION_MINOR + 3;
    len = llmrelay__peer_envelope__pack(&env2, buf);
    /* messages (field 5, length-delimited) = { worker = 9; field 77 = {} } */
    const uint8_t unknown_msg[] = {0x2a, 0x05, 0x10, 0x09, 0xea, 0x04, 0x00};
    memcpy(buf + len, unknown_msg, sizeof(unknown_msg));
    len += sizeof(unknown_msg);
    got = llmrelay__peer_envelope__unpack(NULL, len, buf);
    assert_non_null(got);
    assert_true(peer_version_compatible(PEER_PROTO_VERSION_MAJOR, got->version_major, why, sizeof(why)));
    assert_int_equal(got->n_messages, 1);
    assert_int_equal(got->messages[0]->worker, 9);
    assert_int_equal(got->messages[0]->body_case, LLMRELAY__PEER_MESSAGE__BODY__NOT_SET);
    llmrelay__peer_envelope__free_unpacked(got, NULL);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void test_bench(void **state)
{
    (void)state;
    enum { LEN = 4096, ROUNDS = 20000 };
    peer_frame_t *a = make(KEY, 0xA1, 0), *b = make(KEY, 0xB2, 0);
    static uint8_t payload[LEN], frame[LEN + PEER_FRAME_OVERHEAD];
    memset(payload, 0x42, sizeof(payload));
    size_t n = 0;
    double t0 = now_ns();
    for (int i = 0; i < ROUNDS; i++)
        assert_int_equal(peer_frame_seal(a, T0, payload, LEN, frame, sizeof(frame), &n), 0);
    double t1 = now_ns();
    for (int i = 0; i < ROUNDS; i++) {
        assert_int_equal(peer_frame_seal(a, T0, payload, LEN, frame, sizeof(frame), &n), 0);
        assert_int_equal(peer_frame_open(b, frame, n, T0, NULL, NULL), 0);
    }
    double t2 = now_ns();
    double seal_ns = (t1 - t0) / ROUNDS, both_ns = (t2 - t1) / ROUNDS;
    printf("bench: %d-byte payload: seal %.0f ns, seal+open %.0f ns (%.0f MB/s through both)\n", LEN, seal_ns, both_ns,
           LEN / both_ns * 1e3);
    peer_frame_free(a);
    peer_frame_free(b);
}

int main(void)
{
    keys_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),    cmocka_unit_test(test_wire_format), cmocka_unit_test(test_bit_flips),
        cmocka_unit_test(test_other_key),     cmocka_unit_test(test_time_window), cmocka_unit_test(test_replay),
        cmocka_unit_test(test_senders_bound), cmocka_unit_test(test_malformed),   cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_version),       cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
