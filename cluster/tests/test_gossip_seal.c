/* Tests of gossip_seal: round trips, the wire format against an independent computation
 * (OpenSSL's HKDF + AES-256-GCM), single-bit flips everywhere, wrong key, replays, the
 * sliding window (out of order, too old, its edge), independent senders, the LRU bound
 * under 100k senders, expiry, nonce uniqueness, malformed lengths (exact-size heap buffers,
 * so ASan sees any over-read) and argument errors; then a seal+open micro-benchmark.
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
#include <openssl/kdf.h>

#include "cluster/gossip_seal.h"

static uint8_t KEY[GOSSIP_SEAL_KEY_LEN];
static uint8_t OTHER_KEY[GOSSIP_SEAL_KEY_LEN];

static void keys_init(void)
{
    for (int i = 0; i < GOSSIP_SEAL_KEY_LEN; i++) {
        KEY[i] = (uint8_t)(i * 7 + 1);
        OTHER_KEY[i] = (uint8_t)(i * 7 + 2);
    }
}

static gossip_seal_t *make(const uint8_t *key, uint64_t boot_id, size_t max_senders)
{
    gossip_seal_t *ctx = NULL;
    assert_int_equal(gossip_seal_create(key, GOSSIP_SEAL_KEY_LEN, boot_id, max_senders, &ctx), 0);
    assert_non_null(ctx);
    return ctx;
}

static size_t seal(gossip_seal_t *ctx, uint64_t sender_id, const void *plain, size_t len, uint8_t *out)
{
    size_t n = 0;
    assert_int_equal(gossip_seal_seal(ctx, sender_id, plain, len, out, GOSSIP_SEAL_MAX_PACKET, &n), 0);
    assert_int_equal(n, len + GOSSIP_SEAL_OVERHEAD);
    return n;
}

/* Opens packet[0..len) from an exact-size heap copy. */
static int open_pkt(gossip_seal_t *ctx, const uint8_t *packet, size_t len, uint64_t now_ms, uint8_t *out,
                    size_t *out_len, uint64_t *from)
{
    uint8_t *copy = malloc(len > 0 ? len : 1);
    assert_non_null(copy);
    if (len > 0)
        memcpy(copy, packet, len);
    int rc = gossip_seal_open(ctx, len > 0 ? copy : NULL, len, now_ms, out, GOSSIP_SEAL_MAX_PLAIN, out_len, from);
    free(copy);
    return rc;
}

static int open_simple(gossip_seal_t *ctx, const uint8_t *packet, size_t len)
{
    uint8_t out[GOSSIP_SEAL_MAX_PLAIN];
    size_t n = 0;
    return open_pkt(ctx, packet, len, 1000, out, &n, NULL);
}

static gossip_seal_stats_t stats_of(const gossip_seal_t *ctx)
{
    gossip_seal_stats_t st;
    gossip_seal_get_stats(ctx, &st);
    return st;
}

static void test_round_trip(void **state)
{
    (void)state;
    gossip_seal_t *tx = make(KEY, 0x1122334455667788ULL, 0);
    gossip_seal_t *rx = make(KEY, 42, 0);
    size_t lens[] = {0, 1, 15, 16, 17, 512, GOSSIP_SEAL_MAX_PLAIN};
    uint8_t plain[GOSSIP_SEAL_MAX_PLAIN], pkt[GOSSIP_SEAL_MAX_PACKET], out[GOSSIP_SEAL_MAX_PLAIN];
    for (size_t i = 0; i < sizeof(plain); i++)
        plain[i] = (uint8_t)(i * 31 + 5);
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        size_t n = seal(tx, 0xabcdef, plain, lens[k], pkt);
        assert_int_equal(pkt[0], GOSSIP_SEAL_VERSION);
        assert_int_equal(gossip_seal_counter(tx), k + 1);
        if (lens[k] >= 16) /* the plaintext is not on the wire */
            assert_null(memmem(pkt, n, plain, 16));
        size_t got = 99;
        uint64_t from = 0;
        assert_int_equal(open_pkt(rx, pkt, n, 1000 + k, out, &got, &from), 0);
        assert_int_equal(got, lens[k]);
        assert_int_equal(from, 0xabcdef);
        if (got > 0)
            assert_memory_equal(out, plain, got);
    }
    /* an empty payload opens with out == NULL */
    size_t n = seal(tx, 7, NULL, 0, pkt);
    size_t got = 99;
    assert_int_equal(gossip_seal_open(rx, pkt, n, 5, NULL, 0, &got, NULL), 0);
    assert_int_equal(got, 0);

    gossip_seal_stats_t st = stats_of(rx);
    assert_int_equal(st.opened, 8);
    assert_int_equal(st.senders, 2); /* (0xabcdef, boot) and (7, boot) */
    assert_int_equal(st.forged + st.malformed + st.replayed + st.too_old, 0);
    assert_int_equal(stats_of(tx).sealed, 8);
    assert_int_equal(gossip_seal_boot_id(tx), 0x1122334455667788ULL);
    gossip_seal_free(tx);
    gossip_seal_free(rx);
}

/* The wire format, recomputed with OpenSSL's own HKDF and AES-256-GCM. */
static void test_wire_format(void **state)
{
    (void)state;
    const uint64_t boot = 0x0102030405060708ULL, sender = 0xa1a2a3a4a5a6a7a8ULL;
    gossip_seal_t *tx = make(KEY, boot, 0);
    const char *msg = "ping 17 alive";
    uint8_t pkt[GOSSIP_SEAL_MAX_PACKET];
    seal(tx, sender, "x", 1, pkt);
    size_t n = seal(tx, sender, msg, strlen(msg), pkt); /* counter 2 */

    const uint8_t header[GOSSIP_SEAL_HEADER_LEN] = {1,    0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8,
                                                    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0,
                                                    0,    0,    0,    0,    0,    0,    2};
    assert_memory_equal(pkt, header, sizeof(header));

    uint8_t info[sizeof(GOSSIP_SEAL_LABEL) - 1 + 8];
    memcpy(info, GOSSIP_SEAL_LABEL, sizeof(GOSSIP_SEAL_LABEL) - 1);
    memcpy(info + sizeof(GOSSIP_SEAL_LABEL) - 1, header + 9, 8);
    uint8_t key[32];
    size_t key_len = sizeof(key);
    EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    assert_non_null(kctx);
    assert_int_equal(EVP_PKEY_derive_init(kctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_hkdf_md(kctx, EVP_sha256()), 1);
    assert_int_equal(EVP_PKEY_CTX_set1_hkdf_key(kctx, KEY, sizeof(KEY)), 1);
    assert_int_equal(EVP_PKEY_CTX_add1_hkdf_info(kctx, info, sizeof(info)), 1);
    assert_int_equal(EVP_PKEY_derive(kctx, key, &key_len), 1);
    EVP_PKEY_CTX_free(kctx);

    uint8_t nonce[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
    uint8_t expect[64];
    int outl = 0, finl = 0;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    assert_int_equal(EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce), 1);
    assert_int_equal(EVP_EncryptUpdate(c, NULL, &outl, header, sizeof(header)), 1);
    assert_int_equal(EVP_EncryptUpdate(c, expect, &outl, (const uint8_t *)msg, (int)strlen(msg)), 1);
    assert_int_equal(EVP_EncryptFinal_ex(c, expect + outl, &finl), 1);
    assert_int_equal(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, expect + strlen(msg)), 1);
    EVP_CIPHER_CTX_free(c);
    assert_int_equal(n, GOSSIP_SEAL_HEADER_LEN + strlen(msg) + 16);
    assert_memory_equal(pkt + GOSSIP_SEAL_HEADER_LEN, expect, strlen(msg) + 16);
    gossip_seal_free(tx);
}

static void test_bit_flips(void **state)
{
    (void)state;
    gossip_seal_t *tx = make(KEY, 99, 0);
    gossip_seal_t *rx = make(KEY, 1, 0);
    uint8_t plain[40], pkt[GOSSIP_SEAL_MAX_PACKET], out[GOSSIP_SEAL_MAX_PLAIN];
    memset(plain, 'p', sizeof(plain));
    size_t n = 0;
    for (int i = 0; i < 5; i++) /* counter 5: no single flip makes it 0 */
        n = seal(tx, 3, plain, sizeof(plain), pkt);
    for (size_t bit = 0; bit < n * 8; bit++) {
        pkt[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        memset(out, 0xaa, sizeof(out));
        size_t got = 99;
        int rc = open_pkt(rx, pkt, n, 1, out, &got, NULL);
        assert_int_equal(rc, bit < 8 ? -EPROTO : -EBADMSG);
        assert_int_equal(got, 0);
        for (size_t i = 0; i < sizeof(plain); i++) /* nothing unauthenticated left behind */
            assert_true(out[i] == 0 || (rc == -EPROTO && out[i] == 0xaa));
        pkt[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    gossip_seal_stats_t st = stats_of(rx);
    assert_int_equal(st.malformed, 8);
    assert_int_equal(st.forged, (n - 1) * 8);
    assert_int_equal(st.senders, 0); /* forgeries create no replay state */
    assert_int_equal(open_simple(rx, pkt, n), 0);
    gossip_seal_free(tx);
    gossip_seal_free(rx);
}

static void test_wrong_key(void **state)
{
    (void)state;
    gossip_seal_t *tx = make(OTHER_KEY, 5, 0);
    gossip_seal_t *rx = make(KEY, 6, 0);
    uint8_t pkt[GOSSIP_SEAL_MAX_PACKET];
    size_t n = seal(tx, 1, "hello", 5, pkt);
    assert_int_equal(open_simple(rx, pkt, n), -EBADMSG);
    n = seal(tx, 1, NULL, 0, pkt); /* the tag alone is checked too */
    assert_int_equal(open_simple(rx, pkt, n), -EBADMSG);
    assert_int_equal(stats_of(rx).forged, 2);
    gossip_seal_free(tx);
    gossip_seal_free(rx);
}

static void test_replay(void **state)
{
    (void)state;
    gossip_seal_t *tx = make(KEY, 5, 0);
    gossip_seal_t *rx = make(KEY, 6, 0);
    uint8_t pkt[GOSSIP_SEAL_MAX_PACKET];
    size_t n = seal(tx, 1, "hello", 5, pkt);
    assert_int_equal(open_simple(rx, pkt, n), 0);
    assert_int_equal(open_simple(rx, pkt, n), -EALREADY);
    assert_int_equal(open_simple(rx, pkt, n), -EALREADY);
    gossip_seal_stats_t st = stats_of(rx);
    assert_int_equal(st.opened, 1);
    assert_int_equal(st.replayed, 2);
    /* the same member restarted (new boot id): a new sender, its counter 1 is fine */
    gossip_seal_t *tx2 = make(KEY, 77, 0);
    n = seal(tx2, 1, "hello", 5, pkt);
    assert_int_equal(open_simple(rx, pkt, n), 0);
    assert_int_equal(stats_of(rx).senders, 2);
    gossip_seal_free(tx);
    gossip_seal_free(tx2);
    gossip_seal_free(rx);
}

static void test_window(void **state)
{
    (void)state;
    enum { N = 400 };
    gossip_seal_t *tx = make(KEY, 5, 0);
    gossip_seal_t *rx = make(KEY, 6, 0);
    static uint8_t pkts[N + 1][GOSSIP_SEAL_OVERHEAD + 4];
    for (int c = 1; c <= N; c++)
        seal(tx, 1, &c, sizeof(c), pkts[c]);
    const size_t n = GOSSIP_SEAL_OVERHEAD + 4;

    assert_int_equal(open_simple(rx, pkts[10], n), 0);
    /* out of order within the window: accepted once each */
    assert_int_equal(open_simple(rx, pkts[5], n), 0);
    assert_int_equal(open_simple(rx, pkts[9], n), 0);
    assert_int_equal(open_simple(rx, pkts[1], n), 0);
    assert_int_equal(open_simple(rx, pkts[5], n), -EALREADY);
    assert_int_equal(open_simple(rx, pkts[10], n), -EALREADY);
    /* jump ahead: 138 - 10 = 128 puts 10 just outside the window, 11 just inside */
    assert_int_equal(open_simple(rx, pkts[138], n), 0);
    assert_int_equal(open_simple(rx, pkts[10], n), -ESTALE);
    assert_int_equal(open_simple(rx, pkts[9], n), -ESTALE);
    assert_int_equal(open_simple(rx, pkts[11], n), 0);
    assert_int_equal(open_simple(rx, pkts[11], n), -EALREADY);
    assert_int_equal(open_simple(rx, pkts[137], n), 0);
    /* shifts of 1, 63, 64, 65 keep the right bits */
    assert_int_equal(open_simple(rx, pkts[139], n), 0);
    assert_int_equal(open_simple(rx, pkts[202], n), 0); /* +63 */
    assert_int_equal(open_simple(rx, pkts[139], n), -EALREADY);
    assert_int_equal(open_simple(rx, pkts[138], n), -EALREADY);
    assert_int_equal(open_simple(rx, pkts[137], n), -EALREADY);
    assert_int_equal(open_simple(rx, pkts[266], n), 0); /* +64 */
    assert_int_equal(open_simple(rx, pkts[202], n), -EALREADY);
    assert_int_equal(open_simple(rx, pkts[139], n), -EALREADY); /* d = 127 */
    assert_int_equal(open_simple(rx, pkts[138], n), -ESTALE);   /* d = 128 */
    assert_int_equal(open_simple(rx, pkts[140], n), 0);         /* d = 126, never seen */
    assert_int_equal(open_simple(rx, pkts[331], n), 0);         /* +65 */
    assert_int_equal(open_simple(rx, pkts[266], n), -EALREADY);
    assert_int_equal(open_simple(rx, pkts[202], n), -ESTALE); /* d = 129 */
    assert_int_equal(open_simple(rx, pkts[204], n), 0);       /* d = 127 */
    /* every counter in the window seen or not, exactly once */
    for (int c = 331 - 127; c <= 331; c++) {
        int rc = open_simple(rx, pkts[c], n);
        if (c == 204 || c == 266 || c == 331)
            assert_int_equal(rc, -EALREADY);
        else
            assert_int_equal(rc, 0);
        assert_int_equal(open_simple(rx, pkts[c], n), -EALREADY);
    }
    assert_int_equal(open_simple(rx, pkts[400], n), 0); /* +69 */
    gossip_seal_stats_t st = stats_of(rx);
    assert_int_equal(st.forged + st.malformed, 0);
    assert_int_equal(st.too_old, 4);
    gossip_seal_free(tx);
    gossip_seal_free(rx);
}

static void test_two_senders(void **state)
{
    (void)state;
    gossip_seal_t *a = make(KEY, 100, 0);
    gossip_seal_t *b = make(KEY, 200, 0);
    gossip_seal_t *rx = make(KEY, 300, 0);
    uint8_t pa[3][64], pb[3][64];
    for (int i = 0; i < 3; i++) {
        seal(a, 1, "aaaa", 4, pa[i]);
        seal(b, 2, "bbbb", 4, pb[i]);
    }
    /* same counters, different senders: accepted independently */
    assert_int_equal(open_simple(rx, pa[2], 45), 0);
    assert_int_equal(open_simple(rx, pb[0], 45), 0);
    assert_int_equal(open_simple(rx, pa[0], 45), 0);
    assert_int_equal(open_simple(rx, pb[2], 45), 0);
    assert_int_equal(open_simple(rx, pb[0], 45), -EALREADY);
    assert_int_equal(open_simple(rx, pa[1], 45), 0);
    assert_int_equal(open_simple(rx, pb[1], 45), 0);
    /* same counter and nonce, different boot ids: different keys, different bytes */
    assert_memory_not_equal(pa[0] + GOSSIP_SEAL_HEADER_LEN, pb[0] + GOSSIP_SEAL_HEADER_LEN, 4 + 16);
    /* a boot id moved to another packet's header does not verify */
    memcpy(pa[0] + 9, pb[0] + 9, 8);
    memcpy(pa[0] + 1, pb[0] + 1, 8);
    gossip_seal_t *rx2 = make(KEY, 301, 0);
    assert_int_equal(open_simple(rx2, pa[0], 45), -EBADMSG);
    assert_int_equal(stats_of(rx).senders, 2);
    gossip_seal_free(a);
    gossip_seal_free(b);
    gossip_seal_free(rx);
    gossip_seal_free(rx2);
}

static void test_lru_bound(void **state)
{
    (void)state;
    enum { SENDERS = 100000, PLEN = 8, PKT = PLEN + GOSSIP_SEAL_OVERHEAD };
    gossip_seal_t *rx = make(KEY, 1, 0);
    uint8_t(*pkts)[PKT] = malloc((size_t)SENDERS * PKT);
    assert_non_null(pkts);
    for (uint64_t i = 0; i < SENDERS; i++) {
        gossip_seal_t *tx = make(KEY, 0x1000000 + i, 1); /* a sender needs no table */
        seal(tx, i, &i, PLEN, pkts[i]);
        gossip_seal_free(tx);
        assert_int_equal(open_simple(rx, pkts[i], PKT), 0);
        assert_true(stats_of(rx).senders <= GOSSIP_SEAL_DEFAULT_MAX_SENDERS);
    }
    gossip_seal_stats_t st = stats_of(rx);
    assert_int_equal(st.senders, GOSSIP_SEAL_DEFAULT_MAX_SENDERS);
    assert_int_equal(st.evicted, SENDERS - GOSSIP_SEAL_DEFAULT_MAX_SENDERS);
    /* the most recent 4096 are remembered */
    for (uint64_t i = SENDERS - GOSSIP_SEAL_DEFAULT_MAX_SENDERS; i < SENDERS; i++)
        assert_int_equal(open_simple(rx, pkts[i], PKT), -EALREADY);
    /* an evicted sender's window is forgotten (documented): its packet opens again */
    assert_int_equal(open_simple(rx, pkts[0], PKT), 0);
    assert_int_equal(stats_of(rx).evicted, SENDERS - GOSSIP_SEAL_DEFAULT_MAX_SENDERS + 1);
    free(pkts);
    gossip_seal_free(rx);
}

static void test_expire(void **state)
{
    (void)state;
    gossip_seal_t *rx = make(KEY, 1, 8);
    uint8_t pkts[6][64], out[64];
    size_t got;
    for (uint64_t i = 0; i < 6; i++) {
        gossip_seal_t *tx = make(KEY, 500 + i, 1);
        seal(tx, i, "x", 1, pkts[i]);
        gossip_seal_free(tx);
        assert_int_equal(open_pkt(rx, pkts[i], 42, 1000 * (i + 1), out, &got, NULL), 0);
    }
    assert_int_equal(gossip_seal_expire(rx, 100, 1000), 0);  /* now < idle: nothing */
    assert_int_equal(gossip_seal_expire(rx, 3500, 1000), 2); /* last seen 1000 and 2000 */
    gossip_seal_stats_t st = stats_of(rx);
    assert_int_equal(st.senders, 4);
    assert_int_equal(st.expired, 2);
    assert_int_equal(open_simple(rx, pkts[2], 42), -EALREADY);
    assert_int_equal(gossip_seal_expire(rx, 1000000, 0), 4);
    assert_int_equal(stats_of(rx).senders, 0);
    /* the table is reusable after it emptied */
    for (uint64_t i = 0; i < 6; i++)
        assert_int_equal(open_simple(rx, pkts[i], 42), 0);
    assert_int_equal(stats_of(rx).senders, 6);
    gossip_seal_free(rx);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nonce uniqueness: counters on the wire strictly increase per context (test_wire_format
 * shows the nonce is the wire counter), and no (key, nonce) pair repeats over many contexts. */
static void test_nonce_unique(void **state)
{
    (void)state;
    enum { ONE = 1000000, CTXS = 1000, PER = 100 };
    gossip_seal_t *tx = make(KEY, 9, 0);
    uint8_t pkt[GOSSIP_SEAL_MAX_PACKET];
    uint64_t prev = 0;
    for (int i = 0; i < ONE; i++) {
        seal(tx, 1, NULL, 0, pkt);
        uint64_t c = 0;
        for (int k = 17; k < 25; k++)
            c = (c << 8) | pkt[k];
        assert_true(c == prev + 1);
        prev = c;
    }
    gossip_seal_free(tx);

    /* Over many incarnations: a zero plaintext encrypts to the GCM keystream block of
     * (key, nonce), so two packets share key and nonce exactly when these 8 bytes repeat
     * (a false alarm has probability ~2^-35 here, and the keys are fixed: no flakiness). */
    uint64_t *ids = malloc(sizeof(uint64_t) * CTXS * PER);
    assert_non_null(ids);
    const uint8_t zeros[8] = {0};
    for (uint64_t b = 0; b < CTXS; b++) {
        gossip_seal_t *t = make(KEY, b * 0x9e3779b97f4a7c15ULL, 1);
        for (int i = 0; i < PER; i++) {
            seal(t, 1, zeros, sizeof(zeros), pkt);
            uint64_t stream = 0;
            for (int k = 0; k < 8; k++)
                stream = (stream << 8) | pkt[GOSSIP_SEAL_HEADER_LEN + k];
            ids[b * PER + (uint64_t)i] = stream;
        }
        gossip_seal_free(t);
    }
    qsort(ids, (size_t)CTXS * PER, sizeof(uint64_t), cmp_u64);
    for (size_t i = 1; i < (size_t)CTXS * PER; i++)
        assert_true(ids[i] != ids[i - 1]);
    free(ids);
}

static void test_malformed(void **state)
{
    (void)state;
    gossip_seal_t *tx = make(KEY, 5, 0);
    gossip_seal_t *rx = make(KEY, 6, 0);
    uint8_t pkt[GOSSIP_SEAL_MAX_PACKET + 8];
    memset(pkt, 0, sizeof(pkt));
    size_t n = seal(tx, 1, "hello world", 11, pkt);
    size_t lens[] = {0, 1, GOSSIP_SEAL_HEADER_LEN, GOSSIP_SEAL_OVERHEAD - 1};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
        assert_int_equal(open_simple(rx, pkt, lens[i]), -EPROTO);
    assert_int_equal(open_simple(rx, pkt, GOSSIP_SEAL_MAX_PACKET + 1), -EPROTO);
    assert_int_equal(open_simple(rx, pkt, GOSSIP_SEAL_MAX_PACKET + 8), -EPROTO);
    /* a truncated or extended packet of valid size is a forgery */
    assert_int_equal(open_simple(rx, pkt, n - 1), -EBADMSG);
    assert_int_equal(open_simple(rx, pkt, n + 1), -EBADMSG);
    assert_int_equal(open_simple(rx, pkt, GOSSIP_SEAL_OVERHEAD), -EBADMSG);
    assert_int_equal(open_simple(rx, pkt, GOSSIP_SEAL_MAX_PACKET), -EBADMSG);
    /* wrong version; counter 0 */
    uint8_t bad[64];
    memcpy(bad, pkt, n);
    bad[0] = 2;
    assert_int_equal(open_simple(rx, bad, n), -EPROTO);
    memcpy(bad, pkt, n);
    memset(bad + 17, 0, 8);
    assert_int_equal(open_simple(rx, bad, n), -EPROTO);
    gossip_seal_stats_t st = stats_of(rx);
    assert_int_equal(st.malformed, 8);
    assert_int_equal(st.forged, 4);
    assert_int_equal(open_simple(rx, pkt, n), 0);

    /* argument errors: not counted */
    uint8_t out[16];
    size_t got = 5;
    assert_int_equal(gossip_seal_open(rx, pkt, n, 0, out, 10, &got, NULL), -ENOBUFS);
    assert_int_equal(gossip_seal_open(rx, pkt, n, 0, NULL, 0, &got, NULL), -EINVAL);
    assert_int_equal(gossip_seal_open(rx, pkt, n, 0, out, sizeof(out), NULL, NULL), -EINVAL);
    assert_int_equal(gossip_seal_open(NULL, pkt, n, 0, out, sizeof(out), &got, NULL), -EINVAL);
    assert_int_equal(gossip_seal_open(rx, NULL, 5, 0, out, sizeof(out), &got, NULL), -EINVAL);
    uint8_t big[GOSSIP_SEAL_MAX_PLAIN + 1] = {0};
    assert_int_equal(gossip_seal_seal(tx, 1, big, sizeof(big), pkt, sizeof(pkt), &got), -EMSGSIZE);
    assert_int_equal(gossip_seal_seal(tx, 1, big, 10, pkt, 10 + GOSSIP_SEAL_OVERHEAD - 1, &got), -ENOBUFS);
    assert_int_equal(gossip_seal_seal(tx, 1, NULL, 10, pkt, sizeof(pkt), &got), -EINVAL);
    assert_int_equal(gossip_seal_seal(tx, 1, big, 10, NULL, sizeof(pkt), &got), -EINVAL);
    assert_int_equal(stats_of(tx).sealed, 1);
    assert_int_equal(gossip_seal_counter(tx), 1);
    st = stats_of(rx);
    assert_int_equal(st.malformed + st.forged, 12);

    gossip_seal_t *c = NULL;
    assert_int_equal(gossip_seal_create(KEY, 31, 1, 0, &c), -EINVAL);
    assert_null(c);
    assert_int_equal(gossip_seal_create(NULL, 32, 1, 0, &c), -EINVAL);
    assert_int_equal(gossip_seal_create(KEY, 32, 1, (size_t)1 << 21, &c), -EINVAL);
    assert_int_equal(gossip_seal_create(KEY, 32, 1, 1, &c), 0); /* a one-entry table works */
    gossip_seal_free(c);
    gossip_seal_free(NULL);
    gossip_seal_free(tx);
    gossip_seal_free(rx);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_bench(void **state)
{
    (void)state;
    enum { N = 200000, LEN = 512 };
    gossip_seal_t *tx = make(KEY, 11, 0);
    gossip_seal_t *rx = make(KEY, 12, 0);
    uint8_t plain[LEN], pkt[GOSSIP_SEAL_MAX_PACKET], out[GOSSIP_SEAL_MAX_PLAIN];
    memset(plain, 'b', sizeof(plain));
    size_t n = 0, got = 0;
    double t0 = now_s();
    for (int i = 0; i < N; i++)
        assert_int_equal(gossip_seal_seal(tx, 1, plain, LEN, pkt, sizeof(pkt), &n), 0);
    double t1 = now_s();
    gossip_seal_t *tx2 = make(KEY, 13, 0);
    double t2 = now_s();
    for (int i = 0; i < N; i++) {
        assert_int_equal(gossip_seal_seal(tx2, 1, plain, LEN, pkt, sizeof(pkt), &n), 0);
        assert_int_equal(gossip_seal_open(rx, pkt, n, 1, out, sizeof(out), &got, NULL), 0);
    }
    double t3 = now_s();
    /* a new sender per packet: the HKDF derivation on first contact */
    gossip_seal_t *rx2 = make(KEY, 14, 0);
    uint8_t first[GOSSIP_SEAL_MAX_PACKET];
    gossip_seal_t *tx3 = make(KEY, 15, 0);
    size_t fn = seal(tx3, 1, plain, LEN, first);
    double t4 = now_s();
    for (int i = 0; i < N / 10; i++) {
        assert_int_equal(gossip_seal_open(rx2, first, fn, 1, out, sizeof(out), &got, NULL), 0);
        gossip_seal_expire(rx2, 2, 0); /* forget it again: next open derives anew */
    }
    double t5 = now_s();
    printf("bench: %d-byte payload: seal %.0f ns, seal+open %.0f ns, open from a new sender (HKDF) %.0f ns\n", LEN,
           (t1 - t0) / N * 1e9, (t3 - t2) / N * 1e9, (t5 - t4) / (N / 10) * 1e9);
    gossip_seal_free(tx);
    gossip_seal_free(tx2);
    gossip_seal_free(tx3);
    gossip_seal_free(rx);
    gossip_seal_free(rx2);
}

int main(void)
{
    keys_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),   cmocka_unit_test(test_wire_format), cmocka_unit_test(test_bit_flips),
        cmocka_unit_test(test_wrong_key),    cmocka_unit_test(test_replay),      cmocka_unit_test(test_window),
        cmocka_unit_test(test_two_senders),  cmocka_unit_test(test_lru_bound),   cmocka_unit_test(test_expire),
        cmocka_unit_test(test_nonce_unique), cmocka_unit_test(test_malformed),   cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
