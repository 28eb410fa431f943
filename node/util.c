/* util.c — small pure helpers shared across llmrelay (see util.h).
 *
 * Everything here is free of global state and of I/O except util_read_file. Address
 * parsing never touches DNS: listeners and peers are given as literals (or "localhost"),
 * so a slow or poisoned resolver can neither stall start-up nor redirect a bind. Hashing,
 * randomness and constant-time compare go through OpenSSL, the one crypto library in the
 * process. Dates are converted with a proleptic-Gregorian day count instead of timegm(),
 * which depends on the process time zone. */
#include "node/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

static int parse_port(const char *s, uint16_t *port)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5)
        return -EINVAL;
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > 65535)
        return -EINVAL;
    *port = (uint16_t)v;
    return 0;
}

int util_parse_hostport(const char *s, struct sockaddr_storage *out, socklen_t *len)
{
    char host[64];
    const char *port_str;

    if (s == NULL)
        return -EINVAL;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return -EINVAL;
        size_t hl = (size_t)(close - s - 1);
        if (hl == 0 || hl >= sizeof(host))
            return -EINVAL;
        memcpy(host, s + 1, hl);
        host[hl] = '\0';
        port_str = close + 2;
        uint16_t port;
        struct in6_addr a6;
        if (parse_port(port_str, &port) != 0 || inet_pton(AF_INET6, host, &a6) != 1)
            return -EINVAL;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
        memset(out, 0, sizeof(*out));
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        sin6->sin6_addr = a6;
        *len = sizeof(*sin6);
        return 0;
    }

    const char *colon = strrchr(s, ':');
    if (colon == NULL || strchr(s, ':') != colon) /* bare IPv6 needs brackets */
        return -EINVAL;
    size_t hl = (size_t)(colon - s);
    if (hl == 0 || hl >= sizeof(host))
        return -EINVAL;
    memcpy(host, s, hl);
    host[hl] = '\0';
    uint16_t port;
    if (parse_port(colon + 1, &port) != 0)
        return -EINVAL;
    struct in_addr a4;
    if (strcmp(host, "localhost") == 0)
        a4.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, host, &a4) != 1)
        return -EINVAL;
    struct sockaddr_in *sin = (struct sockaddr_in *)out;
    memset(out, 0, sizeof(*out));
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr = a4;
    *len = sizeof(*sin);
    return 0;
}

/* SHA-256 is on the request path (every relay key is looked up by its hash). EVP_Digest
 * with EVP_sha256() fetches the implementation from OpenSSL's provider store and allocates
 * a context on every call (about 0.6 us); the implementation is fetched once and each
 * thread keeps one context (freed when the thread exits). */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static pthread_key_t sha256_ctx_key;

static void sha256_ctx_free(void *ctx)
{
    EVP_MD_CTX_free(ctx);
}

static void sha256_init_once(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (sha256_md == NULL || pthread_key_create(&sha256_ctx_key, sha256_ctx_free) != 0)
        abort();
}

void util_sha256(const void *data, size_t len, uint8_t out[32])
{
    pthread_once(&sha256_once, sha256_init_once);
    EVP_MD_CTX *ctx = pthread_getspecific(sha256_ctx_key);
    if (ctx == NULL) {
        if ((ctx = EVP_MD_CTX_new()) == NULL || pthread_setspecific(sha256_ctx_key, ctx) != 0)
            abort();
    }
    unsigned int n = 32;
    /* the final step wipes the hashed block from the context */
    if (EVP_DigestInit_ex2(ctx, sha256_md, NULL) != 1 || EVP_DigestUpdate(ctx, data, len) != 1 ||
        EVP_DigestFinal_ex(ctx, out, &n) != 1)
        abort(); /* only on allocation failure inside OpenSSL; a wrong hash would be worse */
}

void util_hex64(uint64_t v, char out[16])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        out[i] = hex[v & 15];
        v >>= 4;
    }
}

size_t util_u64_dec(uint64_t v, char out[21])
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

void util_sha256_hex(const void *data, size_t len, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t digest[32];
    util_sha256(data, len, digest);
    for (size_t i = 0; i < 32; i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 15];
    }
    out[64] = '\0';
}

int util_random_bytes(void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len > 0) {
        int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
        if (RAND_bytes(p, chunk) != 1)
            return -EIO;
        p += chunk;
        len -= (size_t)chunk;
    }
    return 0;
}

size_t util_base64url(const uint8_t *in, size_t len, char *out, size_t outcap)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if (len > (SIZE_MAX - 4) / 4 * 3 || outcap < UTIL_BASE64URL_LEN(len) + 1) {
        if (outcap > 0)
            out[0] = '\0';
        return 0;
    }
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

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

int util_base64_decode(const char *in, size_t len, uint8_t *out, size_t outcap, size_t *outlen)
{
    uint32_t acc = 0;
    size_t nchars = 0, o = 0, pad = 0;
    int rc = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64_value(c);
        if (v < 0 || pad > 0) { /* bad character, or data after padding */
            rc = -EINVAL;
            goto fail;
        }
        acc = acc << 6 | (uint32_t)v;
        nchars++;
        if (nchars % 4 == 0) {
            if (outcap - o < 3) {
                rc = -ENOBUFS;
                goto fail;
            }
            out[o++] = (uint8_t)(acc >> 16);
            out[o++] = (uint8_t)(acc >> 8);
            out[o++] = (uint8_t)acc;
            acc = 0;
        }
    }
    size_t rest = nchars % 4;
    /* One leftover character cannot encode a byte; padding, when present, must complete the
     * last quantum exactly. */
    if (rest == 1 || (pad > 0 && rest + pad != 4) || pad > 2) {
        rc = -EINVAL;
        goto fail;
    }
    if (rest > 0) {
        size_t extra = rest - 1;
        if (outcap - o < extra) {
            rc = -ENOBUFS;
            goto fail;
        }
        acc <<= 6 * (4 - rest);
        out[o++] = (uint8_t)(acc >> 16);
        if (extra == 2)
            out[o++] = (uint8_t)(acc >> 8);
    }
    acc = 0;
    *outlen = o;
    return 0;

fail:
    OPENSSL_cleanse(out, o);
    OPENSSL_cleanse(&acc, sizeof(acc));
    return rc;
}

void util_request_id_new(char out[33])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t raw[16];
    if (util_random_bytes(raw, sizeof(raw)) != 0) {
        /* Practically unreachable (RAND_bytes seeded from getrandom); an id only needs to
         * be unique, so fall back to time + pid + stack address. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t a = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        uint64_t b = (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)&ts;
        memcpy(raw, &a, 8);
        memcpy(raw + 8, &b, 8);
    }
    for (size_t i = 0; i < 16; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[32] = '\0';
}

bool util_request_id_sane(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > 64)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                  c == ':' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
int64_t util_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void util_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* Unix seconds of 0000-01-01T00:00:00Z and of 9999-12-31T23:59:59Z. */
#define RFC3339_MIN_S (-62167219200LL)
#define RFC3339_MAX_S (253402300799LL)

int util_format_rfc3339(int64_t unix_s, char out[32])
{
    if (unix_s < RFC3339_MIN_S || unix_s > RFC3339_MAX_S) {
        out[0] = '\0';
        return -EINVAL;
    }
    int64_t days = unix_s >= 0 ? unix_s / 86400 : -((-unix_s + 86399) / 86400);
    int64_t secs = unix_s - days * 86400;
    int64_t y;
    unsigned m, d;
    util_civil_from_days(days, &y, &m, &d);
    /* Ranges are known (y 0..9999, m 1..12, d 1..31, secs 0..86399); the casts tell gcc. */
    snprintf(out, 32, "%04u-%02u-%02uT%02u:%02u:%02uZ", (unsigned)y % 10000u, m % 100u, d % 100u,
             (unsigned)(secs / 3600) % 100u, (unsigned)(secs / 60 % 60), (unsigned)(secs % 60));
    return 0;
}

/* Reads exactly n decimal digits. */
static int read_digits(const char **p, int n, int *v)
{
    int r = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -EINVAL;
        r = r * 10 + (c - '0');
    }
    *p += n;
    *v = r;
    return 0;
}

static int expect_char(const char **p, char c)
{
    if (**p != c)
        return -EINVAL;
    (*p)++;
    return 0;
}

int util_parse_rfc3339(const char *s, int64_t *unix_s)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int year, mon, day, hour, min, sec;
    const char *p = s;

    if (s == NULL)
        return -EINVAL;
    if (read_digits(&p, 4, &year) || expect_char(&p, '-') || read_digits(&p, 2, &mon) || expect_char(&p, '-') ||
        read_digits(&p, 2, &day))
        return -EINVAL;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return -EINVAL;
    p++;
    if (read_digits(&p, 2, &hour) || expect_char(&p, ':') || read_digits(&p, 2, &min) || expect_char(&p, ':') ||
        read_digits(&p, 2, &sec))
        return -EINVAL;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return -EINVAL;
        for (int n = 0; *p >= '0' && *p <= '9'; n++, p++)
            if (n >= 9)
                return -EINVAL;
    }
    int offset_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh, om;
        p++;
        if (read_digits(&p, 2, &oh) || expect_char(&p, ':') || read_digits(&p, 2, &om) || oh > 23 || om > 59)
            return -EINVAL;
        offset_s = sign * (oh * 3600 + om * 60);
    } else {
        return -EINVAL;
    }
    if (*p != '\0')
        return -EINVAL;

    if (mon < 1 || mon > 12 || day < 1 || hour > 23 || min > 59 || sec > 60)
        return -EINVAL;
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    int dim = mdays[mon - 1] + (mon == 2 && leap);
    if (day > dim)
        return -EINVAL;

    /* A leap second (":60") lands on the first second of the next minute. */
    *unix_s = util_days_from_civil(year, (unsigned)mon, (unsigned)day) * 86400 + hour * 3600 + min * 60 + sec - offset_s;
    return 0;
}

bool util_ct_equal(const void *a, const void *b, size_t len)
{
    return CRYPTO_memcmp(a, b, len) == 0;
}

int util_read_file(const char *path, size_t max, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return -EFBIG;
    }

    /* Room for the size fstat saw, +1 to notice growth and hold the NUL. */
    size_t cap = (size_t)st.st_size + 1, used = 0;
    char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return -ENOMEM;
    }
    int rc = 0;
    for (;;) {
        if (used == cap) {
            if (used > max) {
                rc = -EFBIG;
                break;
            }
            size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            if (ncap <= cap)
                ncap = cap + 1;
            char *nbuf = malloc(ncap);
            if (nbuf == NULL) {
                rc = -ENOMEM;
                break;
            }
            memcpy(nbuf, buf, used);
            OPENSSL_cleanse(buf, cap);
            free(buf);
            buf = nbuf;
            cap = ncap;
        }
        ssize_t n = read(fd, buf + used, cap - used);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        used += (size_t)n;
    }
    close(fd);
    /* The loop grows the buffer before every read, so at EOF used < cap: room for the NUL. */
    if (rc != 0) {
        OPENSSL_cleanse(buf, cap);
        free(buf);
        return rc;
    }
    buf[used] = '\0';
    *out = buf;
    *len = used;
    return 0;
}

void util_trim_newline(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
}

int util_listen_tcp(const char *addr, const char *what, int *fd_out, int *port_out, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (addr == NULL || util_parse_hostport(addr, &ss, &sslen) != 0) {
        snprintf(err, errlen, "%s \"%s\" is not ADDR:PORT", what, addr != NULL ? addr : "");
        return -EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s %s: socket: %s", what, addr, strerror(e));
        return -e;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sslen) != 0 || listen(fd, 128) != 0) {
        int e = errno;
        close(fd);
        snprintf(err, errlen, "%s %s: %s", what, addr, strerror(e));
        return -e;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    *port_out = 0;
    if (getsockname(fd, (struct sockaddr *)&bound, &blen) == 0) {
        if (bound.ss_family == AF_INET)
            *port_out = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        else if (bound.ss_family == AF_INET6)
            *port_out = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    }
    *fd_out = fd;
    return 0;
}
