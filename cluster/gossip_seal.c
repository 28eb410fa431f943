/* gossip_seal: AES-256-GCM sealing of gossip packets with per-sender replay windows (see
 * gossip_seal.h for the wire format and the key/nonce construction).
 *
 * How it works: create runs HKDF-Extract over the cluster key once and keeps the PRK; a
 * sender's key is HKDF-Expand(PRK, label || boot_id), one HMAC. The sealing EVP context is
 * keyed once with this incarnation's key and only gets a new nonce per packet. The opening
 * context is re-keyed per packet with the sender's key, cached in its replay entry, so a
 * known sender costs no HMAC; an unknown one costs one, and gets an entry only once its
 * packet verified.
 *
 * The replay table is cluster/replay (bounded, LRU, nothing allocated after create) keyed
 * by (sender_id, boot_id), with GOSSIP_SEAL_WINDOW-counter windows; each entry's user data
 * is the sender's cached key.
 *
 * Key material (PRK, own key, cached sender keys, a derived key for an unknown sender) is
 * wiped when no longer needed and at free; EVP contexts wipe their key schedules on free.
 * A failed open wipes what the decryption wrote to out: unauthenticated plaintext never
 * leaves.
 */
#include "cluster/gossip_seal.h"
#include "cluster/replay.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define NONCE_LEN 12
#define LABEL_LEN (sizeof(GOSSIP_SEAL_LABEL) - 1)

struct gossip_seal {
    EVP_CIPHER_CTX *seal_cipher; /* keyed with own_key at create */
    EVP_CIPHER_CTX *open_cipher; /* re-keyed per packet */
    uint8_t prk[32];             /* HKDF-Extract(salt empty, cluster key) */
    uint64_t boot_id;
    uint64_t counter;          /* last counter sealed */
    gossip_seal_stats_t stats; /* evicted, expired and senders come from senders' stats */
    replay_t *senders;         /* user data: the sender's key */
};

/* --- helpers ------------------------------------------------------------------------ */

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void nonce_of(uint8_t nonce[NONCE_LEN], uint64_t counter)
{
    memset(nonce, 0, 4);
    put_be64(nonce + 4, counter);
}

/* HKDF-Expand(prk, label || be64(boot_id), 32): one block, T(1) = HMAC(prk, info || 0x01). */
static int derive_sender_key(const uint8_t prk[32], uint64_t boot_id, uint8_t key[GOSSIP_SEAL_KEY_LEN])
{
    uint8_t info[LABEL_LEN + 8 + 1];
    memcpy(info, GOSSIP_SEAL_LABEL, LABEL_LEN);
    put_be64(info + LABEL_LEN, boot_id);
    info[LABEL_LEN + 8] = 0x01;
    unsigned int md_len = 0;
    if (HMAC(EVP_sha256(), prk, 32, info, sizeof(info), key, &md_len) == NULL || md_len != GOSSIP_SEAL_KEY_LEN) {
        OPENSSL_cleanse(key, GOSSIP_SEAL_KEY_LEN);
        return -EIO;
    }
    return 0;
}

/* --- API ---------------------------------------------------------------------------- */

int gossip_seal_create(const uint8_t *cluster_key, size_t key_len, uint64_t boot_id, size_t max_senders,
                       gossip_seal_t **out)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (cluster_key == NULL || key_len != GOSSIP_SEAL_KEY_LEN || max_senders > REPLAY_MAX_CAPACITY)
        return -EINVAL;
    if (max_senders == 0)
        max_senders = GOSSIP_SEAL_DEFAULT_MAX_SENDERS;
    gossip_seal_t *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return -ENOMEM;
    ctx->boot_id = boot_id;
    ctx->seal_cipher = EVP_CIPHER_CTX_new();
    ctx->open_cipher = EVP_CIPHER_CTX_new();
    if (replay_create((uint32_t)max_senders, GOSSIP_SEAL_WINDOW, GOSSIP_SEAL_KEY_LEN, &ctx->senders) != 0 ||
        ctx->seal_cipher == NULL || ctx->open_cipher == NULL) {
        gossip_seal_free(ctx);
        return -ENOMEM;
    }

    /* HKDF-Extract with an empty salt: HMAC(32 zero bytes, IKM). */
    static const uint8_t zero_salt[32];
    unsigned int md_len = 0;
    uint8_t own_key[GOSSIP_SEAL_KEY_LEN];
    int rc = -EIO;
    if (HMAC(EVP_sha256(), zero_salt, sizeof(zero_salt), cluster_key, key_len, ctx->prk, &md_len) != NULL &&
        md_len == sizeof(ctx->prk) && derive_sender_key(ctx->prk, boot_id, own_key) == 0 &&
        EVP_EncryptInit_ex(ctx->seal_cipher, EVP_aes_256_gcm(), NULL, own_key, NULL) == 1 &&
        EVP_DecryptInit_ex(ctx->open_cipher, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1)
        rc = 0;
    OPENSSL_cleanse(own_key, sizeof(own_key));
    if (rc != 0) {
        gossip_seal_free(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

void gossip_seal_free(gossip_seal_t *ctx)
{
    if (ctx == NULL)
        return;
    EVP_CIPHER_CTX_free(ctx->seal_cipher);
    EVP_CIPHER_CTX_free(ctx->open_cipher);
    replay_free(ctx->senders); /* wipes the cached keys */
    OPENSSL_cleanse(ctx, sizeof(*ctx));
    free(ctx);
}

int gossip_seal_seal(gossip_seal_t *ctx, uint64_t sender_id, const uint8_t *plain, size_t len, uint8_t *out,
                     size_t out_cap, size_t *out_len)
{
    if (out_len != NULL)
        *out_len = 0;
    if (ctx == NULL || (plain == NULL && len > 0) || out == NULL || out_len == NULL)
        return -EINVAL;
    if (len > GOSSIP_SEAL_MAX_PLAIN)
        return -EMSGSIZE;
    if (out_cap < len + GOSSIP_SEAL_OVERHEAD)
        return -ENOBUFS;
    if (ctx->counter == UINT64_MAX)
        return -EOVERFLOW;
    uint64_t counter = ctx->counter + 1;

    out[0] = GOSSIP_SEAL_VERSION;
    put_be64(out + 1, sender_id);
    put_be64(out + 9, ctx->boot_id);
    put_be64(out + 17, counter);
    uint8_t nonce[NONCE_LEN];
    nonce_of(nonce, counter);
    uint8_t *ct = out + GOSSIP_SEAL_HEADER_LEN;
    int outl = 0, finl = 0;
    EVP_CIPHER_CTX *c = ctx->seal_cipher;
    if (EVP_EncryptInit_ex(c, NULL, NULL, NULL, nonce) != 1 ||
        EVP_EncryptUpdate(c, NULL, &outl, out, GOSSIP_SEAL_HEADER_LEN) != 1 ||
        (len > 0 && EVP_EncryptUpdate(c, ct, &outl, plain, (int)len) != 1) ||
        EVP_EncryptFinal_ex(c, ct + (len > 0 ? outl : 0), &finl) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, GOSSIP_SEAL_TAG_LEN, ct + len) != 1) {
        /* The counter is spent anyway: a nonce that may have been used is never used again. */
        ctx->counter = counter;
        OPENSSL_cleanse(out, len + GOSSIP_SEAL_OVERHEAD);
        return -EIO;
    }
    ctx->counter = counter;
    ctx->stats.sealed++;
    *out_len = len + GOSSIP_SEAL_OVERHEAD;
    return 0;
}

int gossip_seal_open(gossip_seal_t *ctx, const uint8_t *packet, size_t len, uint64_t now_ms, uint8_t *out,
                     size_t out_cap, size_t *out_len, uint64_t *sender_id)
{
    if (out_len != NULL)
        *out_len = 0;
    if (sender_id != NULL)
        *sender_id = 0;
    if (ctx == NULL || (packet == NULL && len > 0) || out_len == NULL)
        return -EINVAL;
    if (len < GOSSIP_SEAL_OVERHEAD || len > GOSSIP_SEAL_MAX_PACKET || packet[0] != GOSSIP_SEAL_VERSION) {
        ctx->stats.malformed++;
        return -EPROTO;
    }
    uint64_t from = get_be64(packet + 1);
    uint64_t boot_id = get_be64(packet + 9);
    uint64_t counter = get_be64(packet + 17);
    if (counter == 0) { /* never sealed: counters start at 1 */
        ctx->stats.malformed++;
        return -EPROTO;
    }
    size_t plain_len = len - GOSSIP_SEAL_OVERHEAD;
    if (plain_len > 0 && out == NULL)
        return -EINVAL;
    if (out_cap < plain_len)
        return -ENOBUFS;

    replay_entry_t *s = replay_find(ctx->senders, from, boot_id);
    if (s != NULL) {
        replay_verdict_t v = replay_check(ctx->senders, s, counter);
        if (v == REPLAY_REPLAYED) {
            ctx->stats.replayed++;
            return -EALREADY;
        }
        if (v == REPLAY_TOO_OLD) {
            ctx->stats.too_old++;
            return -ESTALE;
        }
    }
    uint8_t fresh_key[GOSSIP_SEAL_KEY_LEN];
    if (s == NULL && derive_sender_key(ctx->prk, boot_id, fresh_key) != 0)
        return -EIO;
    const uint8_t *key = s != NULL ? replay_data(s) : fresh_key;

    uint8_t nonce[NONCE_LEN];
    nonce_of(nonce, counter);
    const uint8_t *ct = packet + GOSSIP_SEAL_HEADER_LEN;
    uint8_t tag[GOSSIP_SEAL_TAG_LEN];
    memcpy(tag, ct + plain_len, sizeof(tag)); /* the ctrl takes a non-const pointer */
    uint8_t final_block[16];                  /* GCM writes nothing at final; a valid pointer when out is NULL */
    int outl = 0, finl = 0;
    EVP_CIPHER_CTX *c = ctx->open_cipher;
    int rc = -EIO;
    if (EVP_DecryptInit_ex(c, NULL, NULL, key, nonce) == 1 &&
        EVP_DecryptUpdate(c, NULL, &outl, packet, GOSSIP_SEAL_HEADER_LEN) == 1 &&
        (plain_len == 0 || EVP_DecryptUpdate(c, out, &outl, ct, (int)plain_len) == 1) &&
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, GOSSIP_SEAL_TAG_LEN, tag) == 1) {
        rc = EVP_DecryptFinal_ex(c, plain_len > 0 ? out + outl : final_block, &finl) == 1 ? 0 : -EBADMSG;
    }
    if (rc != 0) {
        if (plain_len > 0)
            OPENSSL_cleanse(out, plain_len);
        if (s == NULL)
            OPENSSL_cleanse(fresh_key, sizeof(fresh_key));
        if (rc == -EBADMSG)
            ctx->stats.forged++;
        return rc;
    }

    if (s == NULL) {
        s = replay_get(ctx->senders, from, boot_id, NULL);
        memcpy(replay_data(s), fresh_key, sizeof(fresh_key));
        OPENSSL_cleanse(fresh_key, sizeof(fresh_key));
    }
    replay_accept(ctx->senders, s, counter);
    replay_touch(ctx->senders, s, now_ms);
    ctx->stats.opened++;
    *out_len = plain_len;
    if (sender_id != NULL)
        *sender_id = from;
    return 0;
}

size_t gossip_seal_expire(gossip_seal_t *ctx, uint64_t now_ms, uint64_t idle_ms)
{
    if (ctx == NULL)
        return 0;
    /* The LRU tail is the least recently accepted; replay_expire stops at the first entry still fresh. */
    return replay_expire(ctx->senders, now_ms, idle_ms);
}

uint64_t gossip_seal_boot_id(const gossip_seal_t *ctx)
{
    return ctx->boot_id;
}

uint64_t gossip_seal_counter(const gossip_seal_t *ctx)
{
    return ctx->counter;
}

void gossip_seal_get_stats(const gossip_seal_t *ctx, gossip_seal_stats_t *out)
{
    replay_stats_t rs;
    replay_get_stats(ctx->senders, &rs);
    *out = ctx->stats;
    out->evicted = rs.evicted;
    out->expired = rs.expired;
    out->senders = rs.entries;
}
