/*
 * http.c — the admin API client of llmrelayctl: one synchronous libcurl easy request per
 * call, Bearer token from the context, JSON answer read into a bounded buffer.
 *
 * The answer buffer grows by allocate-copy-wipe-free (never realloc), so no copy of an
 * answer (which may hold a freshly created relay key) is left behind in freed memory;
 * the Authorization header is wiped in curl's header list before that list is freed.
 * Proxies from the environment are not used: the token goes only to the admin URL given.
 */
#include "ops/ctl/http.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "ops/ctl/json.h"

struct body_buffer {
    char *data;
    size_t len;
    size_t cap;
    int too_big;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct body_buffer *buf = userdata;
    size_t n = size * nmemb;
    if (n > CTL_MAX_RESPONSE - buf->len) {
        buf->too_big = 1;
        return 0;
    }
    if (buf->len + n + 1 > buf->cap) {
        size_t cap = buf->cap ? buf->cap : 4096;
        while (cap < buf->len + n + 1)
            cap *= 2;
        char *grown = malloc(cap);
        if (grown == NULL)
            return 0;
        if (buf->data != NULL) {
            memcpy(grown, buf->data, buf->len);
            explicit_bzero(buf->data, buf->cap);
            free(buf->data);
        }
        buf->data = grown;
        buf->cap = cap;
    }
    memcpy(buf->data + buf->len, ptr, n);
    buf->len += n;
    buf->data[buf->len] = '\0';
    return n;
}

/* The admin URL without any "user:password@" part, for messages. */
static void printable_url(const char *url, char *out, size_t cap)
{
    const char *scheme_end = strstr(url, "://");
    const char *host = scheme_end ? scheme_end + 3 : url;
    size_t host_len = strcspn(host, "/?#");
    const char *at = memchr(host, '@', host_len);
    if (at != NULL)
        snprintf(out, cap, "%.*s%s", (int)(host - url), url, at + 1);
    else
        snprintf(out, cap, "%s", url);
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
}

static void wipe_slist(struct curl_slist *list)
{
    for (struct curl_slist *it = list; it != NULL; it = it->next)
        explicit_bzero(it->data, strlen(it->data));
    curl_slist_free_all(list);
}

int ctl_http_call(struct ctl *ctl, const char *method, const char *path, const char *body, size_t body_len,
                  struct ctl_response *resp)
{
    char shown[512];
    printable_url(ctl->admin_url, shown, sizeof(shown));
    memset(resp, 0, sizeof(*resp));
    if (strncmp(ctl->admin_url, "http://", 7) != 0 && strncmp(ctl->admin_url, "https://", 8) != 0) {
        ctl_errorf(ctl, "admin URL must start with http:// or https:// (got %s)", shown);
        return -EINVAL;
    }
    size_t base_len = strlen(ctl->admin_url);
    while (base_len > 0 && ctl->admin_url[base_len - 1] == '/')
        base_len--;
    size_t url_len = base_len + strlen(path) + 1;
    char *url = malloc(url_len);
    if (url == NULL)
        return -ENOMEM;
    snprintf(url, url_len, "%.*s%s", (int)base_len, ctl->admin_url, path);

    CURL *curl = curl_easy_init();
    if (curl == NULL) {
        free(url);
        return -ENOMEM;
    }
    struct curl_slist *headers = NULL;
    struct curl_slist *next;
    struct body_buffer buf = {0};
    char errbuf[CURL_ERROR_SIZE] = "";
    int rc = 0;
    static const char *const fixed[] = {"Accept: application/json",
                                        "Expect:", "User-Agent: llmrelayctl/" LLMRELAY_VERSION};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if ((next = curl_slist_append(headers, fixed[i])) == NULL)
            goto oom;
        headers = next;
    }
    if (body != NULL) {
        if ((next = curl_slist_append(headers, "Content-Type: application/json")) == NULL)
            goto oom;
        headers = next;
    }
    if (ctl->token != NULL) {
        size_t auth_len = strlen("Authorization: Bearer ") + strlen(ctl->token) + 1;
        char *auth = malloc(auth_len);
        if (auth == NULL)
            goto oom;
        snprintf(auth, auth_len, "Authorization: Bearer %s", ctl->token);
        next = curl_slist_append(headers, auth);
        explicit_bzero(auth, auth_len);
        free(auth);
        if (next == NULL)
            goto oom;
        headers = next;
    }

    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_PROXY, "");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &buf);
    if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
        if (body != NULL || strcmp(method, "POST") == 0) {
            curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body != NULL ? body : "");
            curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body != NULL ? body_len : 0));
        }
    }

    CURLcode res = curl_easy_perform(curl);
    if (res == CURLE_OK) {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
        if (buf.data == NULL) {
            buf.data = calloc(1, 1);
            if (buf.data == NULL)
                rc = -ENOMEM;
        }
        resp->body = buf.data;
        resp->len = buf.len;
        buf.data = NULL;
    } else if (buf.too_big) {
        ctl_errorf(ctl, "the answer from %s is over %u bytes", shown, CTL_MAX_RESPONSE);
        rc = -EMSGSIZE;
    } else if (res == CURLE_WRITE_ERROR || res == CURLE_OUT_OF_MEMORY) {
        rc = -ENOMEM;
    } else if (res == CURLE_URL_MALFORMAT || res == CURLE_UNSUPPORTED_PROTOCOL) {
        ctl_errorf(ctl, "bad admin URL %s: %s", shown, curl_easy_strerror(res));
        rc = -EINVAL;
    } else {
        ctl_errorf(ctl, "cannot reach the admin API at %s: %s", shown, errbuf[0] ? errbuf : curl_easy_strerror(res));
        rc = -ENOTCONN;
    }
    if (buf.data != NULL) {
        explicit_bzero(buf.data, buf.cap);
        free(buf.data);
    }
    curl_easy_cleanup(curl);
    wipe_slist(headers);
    free(url);
    return rc;

oom:
    curl_easy_cleanup(curl);
    wipe_slist(headers);
    free(url);
    return -ENOMEM;
}

void ctl_response_dispose(struct ctl_response *resp)
{
    if (resp->body != NULL) {
        explicit_bzero(resp->body, resp->len);
        free(resp->body);
    }
    resp->body = NULL;
    resp->len = 0;
}

int ctl_api(struct ctl *ctl, const char *method, const char *path, const char *body, size_t body_len, yajl_val *out)
{
    struct ctl_response resp;
    *out = NULL;
    int rc = ctl_http_call(ctl, method, path, body, body_len, &resp);
    if (rc < 0)
        return rc;
    yajl_val tree = yajl_tree_parse(resp.body, NULL, 0);
    ctl_response_dispose(&resp);
    if (resp.status < 200 || resp.status > 299) {
        yajl_val msg = ctl_json_get(tree, "error", "message", NULL);
        char *text = YAJL_IS_STRING(msg) ? ctl_json_text(msg, "") : NULL;
        if (text != NULL && text[0] != '\0')
            ctl_errorf(ctl, "%s (HTTP %ld)", text, resp.status);
        else
            ctl_errorf(ctl, "the admin API answered HTTP %ld", resp.status);
        free(text);
        ctl_json_free(tree);
        return -EREMOTEIO;
    }
    if (tree == NULL) {
        ctl_errorf(ctl, "the admin API answered HTTP %ld with a body that is not JSON", resp.status);
        return -EPROTO;
    }
    *out = tree;
    return 0;
}

int ctl_path_append_segment(char *path, size_t cap, const char *segment)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t len = strlen(path);
    for (const unsigned char *p = (const unsigned char *)segment; *p; p++) {
        int plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                    *p == '.' || *p == '_' || *p == '~';
        size_t need = plain ? 1 : 3;
        if (len + need + 1 > cap)
            return -ENAMETOOLONG;
        if (plain) {
            path[len++] = (char)*p;
        } else {
            path[len++] = '%';
            path[len++] = hex[*p >> 4];
            path[len++] = hex[*p & 15];
        }
    }
    path[len] = '\0';
    return 0;
}
