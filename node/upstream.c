/* upstream.c — picks the backend of an upstream request and dispatches to it.
 *
 * A cleartext http:// upstream that no proxy applies to goes to h2o's HTTP/1.1 client
 * (upstream_h1.c: a fraction of curl's CPU per request); everything else — https://, proxied
 * hosts, and what the h1 backend declines with -ENOTSUP (URLs it cannot parse, more hosts
 * than it keeps pools for) — goes to libcurl (upstream_curl.c). Once started, resume,
 * cancel and the backend's name go through the upstream's vtable.
 *
 * upstream_proxy_applies replays libcurl 7.88's reading of the proxy environment, so the
 * h1 backend never bypasses a proxy that curl would have used:
 *   - http:// uses http_proxy (lowercase only: curl ignores HTTP_PROXY, which a CGI
 *     client can set through a "Proxy:" header); https:// uses https_proxy, then
 *     HTTPS_PROXY; both fall back to all_proxy, then ALL_PROXY. An empty value is unset.
 *   - no_proxy, else NO_PROXY: "*" alone disables every proxy; otherwise a list of
 *     patterns separated by commas and/or blanks. Host names match exactly or as a
 *     domain suffix on a dot boundary, case-insensitively; a leading dot in the pattern
 *     and trailing dots on either side are ignored. IPv4 and IPv6 ([...]) hosts match
 *     addresses or CIDR ranges (a prefix length of 0 means an exact address match). */
#include "node/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "node/upstream_impl.h"

int upstream_start(struct worker *w, const upstream_request_t *req, const upstream_cbs_t *cbs, void *data,
                   upstream_t **out)
{
    if (req == NULL || req->url == NULL || cbs == NULL || out == NULL)
        return -EINVAL;
    if (strncasecmp(req->url, "http://", 7) == 0 && !upstream_proxy_applies(req->url)) {
        int err = upstream_h1_start(w, req, cbs, data, out);
        if (err != -ENOTSUP)
            return err;
    }
    return upstream_curl_start(w, req, cbs, data, out);
}

void upstream_resume(upstream_t *u)
{
    u->vt->resume(u);
}

void upstream_cancel(upstream_t *u)
{
    u->vt->cancel(u);
}

const char *upstream_backend(const upstream_t *u)
{
    return u->vt->name;
}

/* ---- proxy environment ------------------------------------------------------------- */

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Does addr fall in network/bits? family is AF_INET or AF_INET6; both are NUL-terminated. */
static bool cidr_match(int family, const char *addr, const char *network, unsigned bits)
{
    uint8_t a[16], n[16];
    unsigned len = family == AF_INET ? 4 : 16;
    if (bits == 0)
        bits = len * 8; /* curl: no prefix length means the whole address */
    if (bits > len * 8)
        return false;
    if (inet_pton(family, addr, a) != 1 || inet_pton(family, network, n) != 1)
        return false;
    unsigned bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, n, bytes) != 0)
        return false;
    if (rest != 0 && ((a[bytes] ^ n[bytes]) & (uint8_t)(0xff << (8 - rest))) != 0)
        return false;
    return true;
}

/* curl's Curl_check_noproxy: true when host (as in the URL: IPv6 in brackets) is exempt. */
static bool noproxy_match(const char *host, size_t host_len, const char *no_proxy)
{
    enum { NAME, IPV4, IPV6 } type = NAME;
    char name[256];
    if (no_proxy == NULL || host_len == 0)
        return false;
    if (strcmp(no_proxy, "*") == 0)
        return true;
    if (host[0] == '[') {
        const char *end = memchr(host, ']', host_len);
        if (end == NULL || (size_t)(end - host - 1) >= sizeof(name))
            return false;
        host_len = (size_t)(end - host - 1);
        memcpy(name, host + 1, host_len);
        type = IPV6;
    } else {
        if (host_len >= sizeof(name))
            return false;
        memcpy(name, host, host_len);
    }
    name[host_len] = '\0';
    if (type == NAME) {
        uint8_t addr[4];
        if (inet_pton(AF_INET, name, addr) == 1)
            type = IPV4;
        else if (name[host_len - 1] == '.')
            name[--host_len] = '\0';
    }

    const char *p = no_proxy;
    while (*p != '\0') {
        while (is_blank(*p))
            p++;
        const char *token = p;
        while (*p != '\0' && !is_blank(*p) && *p != ',')
            p++;
        size_t token_len = (size_t)(p - token);
        if (token_len > 0) {
            if (type == NAME) {
                if (token[token_len - 1] == '.')
                    token_len--;
                if (token_len > 0 && token[0] == '.') {
                    token++;
                    token_len--;
                }
                if (token_len == host_len && strncasecmp(token, name, host_len) == 0)
                    return true;
                if (token_len > 0 && token_len < host_len && name[host_len - token_len - 1] == '.' &&
                    strncasecmp(token, name + host_len - token_len, token_len) == 0)
                    return true;
            } else if (token_len < 128) {
                char check[128];
                unsigned bits = 0;
                memcpy(check, token, token_len);
                check[token_len] = '\0';
                char *slash = strchr(check, '/');
                if (slash != NULL) {
                    bits = (unsigned)atoi(slash + 1);
                    *slash = '\0';
                }
                if (cidr_match(type == IPV4 ? AF_INET : AF_INET6, name, check, bits))
                    return true;
            }
        }
        while (is_blank(*p) || *p == ',')
            p++;
    }
    return false;
}

bool upstream_proxy_applies(const char *url)
{
    bool https;
    const char *rest;
    if (url == NULL)
        return false;
    if (strncasecmp(url, "http://", 7) == 0) {
        https = false;
        rest = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        https = true;
        rest = url + 8;
    } else {
        return false;
    }

    const char *proxy = https ? env_nonempty("https_proxy") : env_nonempty("http_proxy");
    if (proxy == NULL && https)
        proxy = env_nonempty("HTTPS_PROXY");
    if (proxy == NULL)
        proxy = env_nonempty("all_proxy");
    if (proxy == NULL)
        proxy = env_nonempty("ALL_PROXY");
    if (proxy == NULL)
        return false;

    const char *no_proxy = env_nonempty("no_proxy");
    if (no_proxy == NULL)
        no_proxy = env_nonempty("NO_PROXY");
    if (no_proxy == NULL)
        return true;

    /* The host: the authority minus any user info and port. */
    size_t authority_len = strcspn(rest, "/?#");
    const char *host = rest;
    for (size_t i = authority_len; i > 0; i--) {
        if (rest[i - 1] == '@') {
            host = rest + i;
            break;
        }
    }
    size_t host_len = authority_len - (size_t)(host - rest);
    if (host_len > 0 && host[0] == '[') {
        const char *end = memchr(host, ']', host_len);
        if (end != NULL)
            host_len = (size_t)(end - host) + 1;
    } else {
        const char *colon = memchr(host, ':', host_len);
        if (colon != NULL)
            host_len = (size_t)(colon - host);
    }
    return !noproxy_match(host, host_len, no_proxy);
}
