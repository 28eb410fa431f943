/* util.h — small pure helpers shared by the node and the cluster code: address parsing,
 * SHA-256, random bytes, base64, request ids, RFC 3339 timestamps, constant-time compare,
 * reading small files. No global state; every function is thread-safe.
 *
 * Ownership: every pointer argument is borrowed for the duration of the call, except the
 * buffer util_read_file returns, which the caller owns (free it; wipe it first with
 * OPENSSL_cleanse/explicit_bzero when it held a secret). */
#ifndef LLMRELAY_NODE_UTIL_H
#define LLMRELAY_NODE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Characters util_base64url writes for n input bytes (no padding, no NUL). */
#define UTIL_BASE64URL_LEN(n) (((n) / 3) * 4 + ((n) % 3 ? (n) % 3 + 1 : 0))
/* Upper bound on the bytes util_base64_decode writes for n input characters. */
#define UTIL_BASE64_DECODED_MAX(n) ((((n) + 3) / 4) * 3)

/* Parses "A.B.C.D:PORT", "[v6]:PORT" or "localhost:PORT" (→ 127.0.0.1) into *out and
 * *len. No DNS: any other host name is an error. PORT is 0..65535, decimal digits only.
 * Returns 0 or -EINVAL. */
int util_parse_hostport(const char *s, struct sockaddr_storage *out, socklen_t *len);
/* A non-blocking TCP listening socket (SO_REUSEADDR, backlog 128) bound to addr (ADDR:PORT;
 * port 0 = any): 0 with *fd_out and the bound port in *port_out, or a negative errno with
 * "<what> ...: reason" in err. */
int util_listen_tcp(const char *addr, const char *what, int *fd_out, int *port_out, char *err, size_t errlen);

/* SHA-256 of data; out gets 64 lowercase hex digits + NUL. */
void util_sha256_hex(const void *data, size_t len, char out[65]);
void util_sha256(const void *data, size_t len, uint8_t out[32]);
/* Writes v in decimal, NUL-terminated, into out; returns its length (1..20). */
size_t util_u64_dec(uint64_t v, char out[21]);
/* Writes v as 16 lowercase hex digits (zero-padded, no NUL) into out. */
void util_hex64(uint64_t v, char out[16]);

/* Cryptographically secure random bytes (OpenSSL RAND_bytes). Returns 0 or -EIO. */
int util_random_bytes(void *buf, size_t len);

/* base64url (RFC 4648 §5) without padding, NUL-terminated. Returns the number of
 * characters written (not counting the NUL), or 0 with out[0] = '\0' (when outcap > 0) if
 * outcap < UTIL_BASE64URL_LEN(len) + 1. */
size_t util_base64url(const uint8_t *in, size_t len, char *out, size_t outcap);

/* Decodes standard base64 (RFC 4648 §4, '+' '/'); padding '=' is accepted and may be
 * omitted; ASCII whitespace (e.g. line breaks of `base64` output) is skipped. Returns 0 with
 * *outlen set, -EINVAL on a bad character or bad padding, -ENOBUFS when outcap is too small.
 * On error the bytes already written to out are wiped. */
int util_base64_decode(const char *in, size_t len, uint8_t *out, size_t outcap, size_t *outlen);

/* New request id: 32 lowercase hex digits (128 random bits) + NUL. */
void util_request_id_new(char out[33]);

/* True when s[0..len) is 1..64 characters of [A-Za-z0-9._:-] (safe to echo and log). */
bool util_request_id_sane(const char *s, size_t len);

/* "2026-11-23T10:00:00Z" (UTC). Returns 0, or -EINVAL when the year is outside 0..9999. */
int util_format_rfc3339(int64_t unix_s, char out[32]);

/* Parses RFC 3339 "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)"; 't', 'z' and a
 * space separator are accepted; the fraction is truncated. Returns 0 or -EINVAL. */
int util_parse_rfc3339(const char *s, int64_t *unix_s);

/* Days since 1970-01-01 of a proleptic Gregorian date, and back (y, m 1..12, d 1..31). */
int64_t util_days_from_civil(int64_t y, unsigned m, unsigned d);
void util_civil_from_days(int64_t days, int64_t *y, unsigned *m, unsigned *d);

/* Constant-time equality of two len-byte buffers (CRYPTO_memcmp). */
bool util_ct_equal(const void *a, const void *b, size_t len);

/* Reads a whole regular file of at most max bytes into a new NUL-terminated buffer
 * (*out, caller frees; *len excludes the NUL). Intermediate buffers are wiped. Returns 0,
 * -EFBIG when the file is larger than max, -EINVAL when it is not a regular file, or the
 * negative errno of open/read. */
int util_read_file(const char *path, size_t max, char **out, size_t *len);

/* Removes every trailing '\n' and '\r' from s in place. */
void util_trim_newline(char *s);

#endif
