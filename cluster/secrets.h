/* secrets: sealing of secrets at rest (upstream API keys in etcd and in the snapshot
 * file) with AES-256-GCM under the key of --secrets-key-file.
 *
 * A sealed value is a text token "enc:v1:<base64(nonce[12] || ciphertext || tag[16])>",
 * with a fresh random nonce per seal. The caller's AAD binds a token to where it belongs
 * (e.g. "provider:<name>:api_key:<index>"): a token copied elsewhere does not open.
 *
 * Pure code over OpenSSL EVP: no I/O except secrets_key_load, no logging, no globals.
 *
 * Ownership:
 * - secrets_key_t is a plain value owned by the caller (stack, struct member); copying it
 *   copies the key, so every copy must be wiped with secrets_key_dispose.
 * - *out_text of secrets_seal is owned by the caller: free() (it holds no secret).
 * - *plain of secrets_open is owned by the caller and holds the secret: wipe it
 *   (explicit_bzero(*plain, *len)) before free(). It is NUL-terminated (one extra byte
 *   not counted in *len), so a text secret can be used as a C string.
 * - Inputs are only read during the call.
 */
#ifndef LLMRELAY_CLUSTER_SECRETS_H
#define LLMRELAY_CLUSTER_SECRETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SECRETS_KEY_LEN 32
#define SECRETS_NONCE_LEN 12
#define SECRETS_TAG_LEN 16
#define SECRETS_PREFIX "enc:v1:"
/* Bound on one sealed plaintext (an API key is far smaller). */
#define SECRETS_MAX_PLAIN 4096

typedef struct secrets_key {
    uint8_t bytes[SECRETS_KEY_LEN];
    bool loaded;
} secrets_key_t;

/* Reads a key file: 32 bytes base64-encoded (`head -c 32 /dev/urandom | base64`), trailing
 * whitespace ignored. Returns 0, or: -errno of open/read (-ENOENT, -EACCES...), -EFBIG
 * (file over 1 KiB), -EILSEQ (not base64), -EINVAL (does not decode to exactly 32 bytes).
 * secrets_key_error describes the code. The file's bytes are wiped from memory. */
int secrets_key_load(const char *path, secrets_key_t *out);
/* Uses 32 raw bytes as the key (tests, other key sources). Returns 0 or -EINVAL. */
int secrets_key_set(secrets_key_t *out, const uint8_t *bytes, size_t len);
/* Wipes the key. Safe on a zeroed or already disposed key. */
void secrets_key_dispose(secrets_key_t *key);
/* A short, static, secret-free explanation of a secrets_key_load error code. */
const char *secrets_key_error(int rc);

/* Seals plain[0..len) (len <= SECRETS_MAX_PLAIN) bound to aad. Returns 0, -EINVAL (no key,
 * bad arguments, too long), -ENOMEM or -EIO (OpenSSL failure, e.g. no randomness). */
int secrets_seal(const secrets_key_t *key, const uint8_t *plain, size_t len, const uint8_t *aad, size_t aad_len,
                 char **out_text);
/* Opens a token made by secrets_seal with the same key and aad. Returns 0, -EINVAL (no key,
 * bad arguments, text is not a sealed token: see secrets_is_sealed), -EBADMSG (malformed,
 * tampered, wrong key or wrong aad), -ENOMEM or -EIO. */
int secrets_open(const secrets_key_t *key, const char *text, const uint8_t *aad, size_t aad_len, uint8_t **plain,
                 size_t *len);
/* True when text starts with SECRETS_PREFIX (a sealed token, valid or not). */
bool secrets_is_sealed(const char *text);

#endif
