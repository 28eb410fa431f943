/* pushpull_seal.c — per-connection AES-256-GCM framing of gossip push-pull (see
 * pushpull_seal.h). HKDF is computed with two HMACs (extract with an empty salt, then one
 * expand block), as gossip_seal.c does. */
#include "cluster/pushpull_seal.h"

#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define LABEL_LEN (sizeof(PUSHPULL_SEAL_LABEL) - 1)
static const uint8_t MAGIC[4] = {'L', 'R', 'P', 'P'};

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

void pushpull_wipe(void *p, size_t len)
{
    if (p != NULL && len > 0)
        OPENSSL_cleanse(p, len);
}

void pushpull_hello(const uint8_t s_nonce[PUSHPULL_NONCE_LEN], uint8_t out[PUSHPULL_HELLO_LEN])
{
    memcpy(out, MAGIC, 4);
    out[4] = PUSHPULL_VERSION;
    memcpy(out + 5, s_nonce, PUSHPULL_NONCE_LEN);
}

int pushpull_hello_parse(const uint8_t in[PUSHPULL_HELLO_LEN], uint8_t s_nonce[PUSHPULL_NONCE_LEN])
{
    if (memcmp(in, MAGIC, 4) != 0 || in[4] != PUSHPULL_VERSION)
        return -EPROTO;
    memcpy(s_nonce, in + 5, PUSHPULL_NONCE_LEN);
    return 0;
}

int pushpull_derive(const uint8_t *cluster_key, size_t key_len, const uint8_t s_nonce[PUSHPULL_NONCE_LEN],
                    const uint8_t c_nonce[PUSHPULL_NONCE_LEN], uint8_t key[PUSHPULL_KEY_LEN])
{
    if (cluster_key == NULL || key_len != 32)
        return -EINVAL;
    static const uint8_t zero_salt[32];
    uint8_t prk[32];
    uint8_t info[LABEL_LEN + 2 * PUSHPULL_NONCE_LEN + 1];
    unsigned int md_len = 0, out_len = 0;
    memcpy(info, PUSHPULL_SEAL_LABEL, LABEL_LEN);
    memcpy(info + LABEL_LEN, s_nonce, PUSHPULL_NONCE_LEN);
    memcpy(info + LABEL_LEN + PUSHPULL_NONCE_LEN, c_nonce, PUSHPULL_NONCE_LEN);
    info[sizeof(info) - 1] = 0x01;
    int rc = -EIO;
    if (HMAC(EVP_sha256(), zero_salt, sizeof(zero_salt), cluster_key, key_len, prk, &md_len) != NULL &&
        md_len == sizeof(prk) && HMAC(EVP_sha256(), prk, sizeof(prk), info, sizeof(info), key, &out_len) != NULL &&
        out_len == PUSHPULL_KEY_LEN)
        rc = 0;
    OPENSSL_cleanse(prk, sizeof(prk));
    if (rc != 0)
        OPENSSL_cleanse(key, PUSHPULL_KEY_LEN);
    return rc;
}

long pushpull_frame_len(const uint8_t *in, size_t have, size_t max_plain)
{
    if (have < PUSHPULL_HEADER_LEN)
        return 0;
    if (in[0] != PUSHPULL_VERSION)
        return -EPROTO;
    uint32_t n = get_be32(in + 1);
    if (max_plain > PUSHPULL_MAX_PLAIN)
        max_plain = PUSHPULL_MAX_PLAIN;
    if (n > max_plain)
        return -EMSGSIZE;
    return (long)(n + PUSHPULL_OVERHEAD);
}

static void nonce_of(uint8_t nonce[12], uint32_t dir)
{
    memset(nonce, 0, 12);
    put_be32(nonce, dir);
}

int pushpull_seal(const uint8_t key[PUSHPULL_KEY_LEN], uint32_t dir, const uint8_t *plain, size_t len, uint8_t *out,
                  size_t cap, size_t *out_len)
{
    if (len > PUSHPULL_MAX_PLAIN)
        return -EMSGSIZE;
    if (cap < len + PUSHPULL_OVERHEAD)
        return -ENOBUFS;
    uint8_t nonce[12];
    nonce_of(nonce, dir);
    out[0] = PUSHPULL_VERSION;
    put_be32(out + 1, (uint32_t)len);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, fin = 0, rc = -EIO;
    if (c != NULL && EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce) == 1 &&
        EVP_EncryptUpdate(c, NULL, &n, out, PUSHPULL_HEADER_LEN) == 1 &&
        (len == 0 || EVP_EncryptUpdate(c, out + PUSHPULL_HEADER_LEN, &n, plain, (int)len) == 1) &&
        EVP_EncryptFinal_ex(c, out + PUSHPULL_HEADER_LEN + len, &fin) == 1 &&
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, PUSHPULL_TAG_LEN, out + PUSHPULL_HEADER_LEN + len) == 1) {
        *out_len = len + PUSHPULL_OVERHEAD;
        rc = 0;
    }
    EVP_CIPHER_CTX_free(c);
    return rc;
}

int pushpull_open(const uint8_t key[PUSHPULL_KEY_LEN], uint32_t dir, const uint8_t *frame, size_t len, uint8_t *out,
                  size_t cap, size_t *out_len)
{
    long want = pushpull_frame_len(frame, len, PUSHPULL_MAX_PLAIN);
    if (want <= 0 || (size_t)want != len)
        return -EPROTO;
    size_t plain_len = len - PUSHPULL_OVERHEAD;
    if (cap < plain_len)
        return -ENOBUFS;
    uint8_t nonce[12];
    nonce_of(nonce, dir);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, fin = 0, rc = -EIO;
    if (c != NULL && EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce) == 1 &&
        EVP_DecryptUpdate(c, NULL, &n, frame, PUSHPULL_HEADER_LEN) == 1 &&
        (plain_len == 0 || EVP_DecryptUpdate(c, out, &n, frame + PUSHPULL_HEADER_LEN, (int)plain_len) == 1) &&
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, PUSHPULL_TAG_LEN,
                            (void *)(frame + PUSHPULL_HEADER_LEN + plain_len)) == 1) {
        rc = EVP_DecryptFinal_ex(c, out + plain_len, &fin) == 1 ? 0 : -EBADMSG;
    }
    EVP_CIPHER_CTX_free(c);
    if (rc != 0)
        OPENSSL_cleanse(out, plain_len);
    else
        *out_len = plain_len;
    return rc;
}
