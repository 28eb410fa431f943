/* secrets: AES-256-GCM sealing of secrets at rest (see secrets.h for the token format).
 *
 * How it works: a seal draws a 12-byte nonce from OpenSSL's CSPRNG (random nonces are safe
 * for far more seals than a config will ever see), encrypts with the caller's AAD, appends
 * the 16-byte tag and base64-encodes nonce || ciphertext || tag behind "enc:v1:". Opening
 * reverses it and fails closed: any decoding problem, a wrong key, a wrong AAD or a changed
 * byte all end in -EBADMSG without releasing plaintext. The base64 decoder is strict
 * (standard alphabet, '=' padding only at the end) so one token has one spelling.
 *
 * Every buffer that held key material or plaintext is wiped before it is freed; the EVP
 * context wipes its own key schedule when freed.
 */
#include "cluster/secrets.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#define KEY_FILE_MAX 1024
#define PREFIX_LEN (sizeof(SECRETS_PREFIX) - 1)
/* Largest sealed token accepted by secrets_open. */
#define MAX_TOKEN_TEXT (PREFIX_LEN + ((SECRETS_NONCE_LEN + SECRETS_MAX_PLAIN + SECRETS_TAG_LEN + 2) / 3) * 4)

/* --- base64 ------------------------------------------------------------------------- */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes in[0..len) into out (room for len / 4 * 3 bytes). Returns the decoded length or
 * -1 when in is not canonical padded base64. */
static ssize_t b64_decode(const char *in, size_t len, uint8_t *out)
{
    if (len % 4 != 0)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            unsigned char c = (unsigned char)in[i + j];
            if (c == '=' && i + 4 == len && j >= 2) {
                v[j] = 0;
                pad++;
                continue;
            }
            if (pad > 0)
                return -1; /* data after padding */
            v[j] = b64_value(c);
            if (v[j] < 0)
                return -1;
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[n++] = (uint8_t)(w >> 16);
        if (pad < 2)
            out[n++] = (uint8_t)(w >> 8);
        if (pad < 1)
            out[n++] = (uint8_t)w;
        /* Unused bits under the padding must be zero (canonical form). */
        if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0))
            return -1;
    }
    return (ssize_t)n;
}

/* --- key ---------------------------------------------------------------------------- */
int secrets_key_set(secrets_key_t *out, const uint8_t *bytes, size_t len)
{
    if (out == NULL || bytes == NULL || len != SECRETS_KEY_LEN)
        return -EINVAL;
    memcpy(out->bytes, bytes, SECRETS_KEY_LEN);
    out->loaded = true;
    return 0;
}

void secrets_key_dispose(secrets_key_t *key)
{
    if (key != NULL)
        OPENSSL_cleanse(key, sizeof(*key));
}

int secrets_key_load(const char *path, secrets_key_t *out)
{
    if (path == NULL || out == NULL)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char buf[KEY_FILE_MAX + 1];
    uint8_t raw[KEY_FILE_MAX];
    size_t len = 0;
    int rc = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > KEY_FILE_MAX) {
            rc = -EFBIG;
            break;
        }
    }
    close(fd);
    if (rc == 0) {
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' || buf[len - 1] == '\t'))
            len--;
        ssize_t n = b64_decode(buf, len, raw);
        if (n < 0)
            rc = -EILSEQ;
        else if (n != SECRETS_KEY_LEN)
            rc = -EINVAL;
        else
            rc = secrets_key_set(out, raw, SECRETS_KEY_LEN);
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    OPENSSL_cleanse(raw, sizeof(raw));
    return rc;
}

const char *secrets_key_error(int rc)
{
    switch (rc) {
    case 0:
        return "ok";
    case -ENOENT:
        return "file not found";
    case -EACCES:
        return "permission denied";
    case -EFBIG:
        return "file too large for a key (expected 32 bytes, base64-encoded)";
    case -EILSEQ:
        return "not base64 (expected the output of: head -c 32 /dev/urandom | base64)";
    case -EINVAL:
        return "wrong key length: must decode to exactly 32 bytes (head -c 32 /dev/urandom | base64)";
    default:
        return "cannot read the file";
    }
}

/* --- seal / open -------------------------------------------------------------------- */
bool secrets_is_sealed(const char *text)
{
    return text != NULL && strncmp(text, SECRETS_PREFIX, PREFIX_LEN) == 0;
}

int secrets_seal(const secrets_key_t *key, const uint8_t *plain, size_t len, const uint8_t *aad, size_t aad_len,
                 char **out_text)
{
    if (out_text != NULL)
        *out_text = NULL;
    if (key == NULL || !key->loaded || (plain == NULL && len > 0) || (aad == NULL && aad_len > 0) || out_text == NULL ||
        len > SECRETS_MAX_PLAIN || aad_len > INT32_MAX)
        return -EINVAL;
    size_t bin_len = SECRETS_NONCE_LEN + len + SECRETS_TAG_LEN;
    uint8_t *bin = malloc(bin_len);
    size_t text_cap = PREFIX_LEN + (bin_len + 2) / 3 * 4 + 1;
    char *text = malloc(text_cap);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int rc = -EIO, outl = 0, finl = 0;
    if (bin == NULL || text == NULL || ctx == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    uint8_t *nonce = bin, *ct = bin + SECRETS_NONCE_LEN, *tag = ct + len;
    if (RAND_bytes(nonce, SECRETS_NONCE_LEN) != 1)
        goto out;
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SECRETS_NONCE_LEN, NULL) != 1 ||
        EVP_EncryptInit_ex(ctx, NULL, NULL, key->bytes, nonce) != 1)
        goto out;
    if (aad_len > 0 && EVP_EncryptUpdate(ctx, NULL, &outl, aad, (int)aad_len) != 1)
        goto out;
    if (len > 0 && EVP_EncryptUpdate(ctx, ct, &outl, plain, (int)len) != 1)
        goto out;
    if (EVP_EncryptFinal_ex(ctx, ct + outl, &finl) != 1 || (size_t)(outl + finl) != len)
        goto out;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SECRETS_TAG_LEN, tag) != 1)
        goto out;
    memcpy(text, SECRETS_PREFIX, PREFIX_LEN);
    EVP_EncodeBlock((unsigned char *)text + PREFIX_LEN, bin, (int)bin_len);
    *out_text = text;
    text = NULL;
    rc = 0;
out:
    EVP_CIPHER_CTX_free(ctx);
    free(text);
    if (bin != NULL) {
        OPENSSL_cleanse(bin, bin_len); /* ciphertext only, but cheap */
        free(bin);
    }
    return rc;
}

int secrets_open(const secrets_key_t *key, const char *text, const uint8_t *aad, size_t aad_len, uint8_t **plain,
                 size_t *len)
{
    if (plain != NULL)
        *plain = NULL;
    if (len != NULL)
        *len = 0;
    if (key == NULL || !key->loaded || text == NULL || (aad == NULL && aad_len > 0) || plain == NULL || len == NULL ||
        aad_len > INT32_MAX)
        return -EINVAL;
    if (!secrets_is_sealed(text))
        return -EINVAL;
    const char *b64 = text + PREFIX_LEN;
    size_t b64_len = strnlen(b64, MAX_TOKEN_TEXT + 1);
    if (b64_len > MAX_TOKEN_TEXT)
        return -EBADMSG;
    uint8_t *bin = malloc(b64_len / 4 * 3 + 1);
    if (bin == NULL)
        return -ENOMEM;
    ssize_t bin_len = b64_decode(b64, b64_len, bin);
    if (bin_len < (ssize_t)(SECRETS_NONCE_LEN + SECRETS_TAG_LEN)) {
        free(bin);
        return -EBADMSG;
    }
    size_t ct_len = (size_t)bin_len - SECRETS_NONCE_LEN - SECRETS_TAG_LEN;
    uint8_t *nonce = bin, *ct = bin + SECRETS_NONCE_LEN, *tag = ct + ct_len;
    uint8_t *out = malloc(ct_len + 1);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int rc = -EIO, outl = 0, finl = 0;
    if (out == NULL || ctx == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SECRETS_NONCE_LEN, NULL) != 1 ||
        EVP_DecryptInit_ex(ctx, NULL, NULL, key->bytes, nonce) != 1)
        goto out;
    if (aad_len > 0 && EVP_DecryptUpdate(ctx, NULL, &outl, aad, (int)aad_len) != 1)
        goto out;
    outl = 0;
    if (ct_len > 0 && EVP_DecryptUpdate(ctx, out, &outl, ct, (int)ct_len) != 1)
        goto out;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SECRETS_TAG_LEN, tag) != 1)
        goto out;
    if (EVP_DecryptFinal_ex(ctx, out + outl, &finl) != 1) {
        rc = -EBADMSG; /* the tag does not match: tampered, wrong key or wrong aad */
        goto out;
    }
    if ((size_t)(outl + finl) != ct_len)
        goto out;
    out[ct_len] = 0;
    *plain = out;
    *len = ct_len;
    out = NULL;
    rc = 0;
out:
    EVP_CIPHER_CTX_free(ctx);
    if (out != NULL) {
        OPENSSL_cleanse(out, ct_len + 1); /* unauthenticated plaintext never leaves */
        free(out);
    }
    free(bin);
    return rc;
}
