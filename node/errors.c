/* errors.c — error bodies in the shape of the API called, and the responses that carry them. */
#include "node/errors.h"

#include <stdio.h>
#include <string.h>

/* Each contract code in the three shapes: OpenAI's type, Anthropic's type and Gemini's
 * status; NULL where the HTTP status decides (see names_of). */
static const struct error_names {
    const char *code, *openai, *anthropic, *gemini;
} names[] = {
    {"invalid_api_key", "invalid_request_error", "authentication_error", "UNAUTHENTICATED"},
    {"model_not_allowed", "permission_error", "permission_error", "PERMISSION_DENIED"},
    {"model_not_found", "invalid_request_error", "not_found_error", "NOT_FOUND"},
    {"invalid_request", "invalid_request_error", NULL, NULL},
    {"request_too_large", "invalid_request_error", "request_too_large", NULL},
    {"rate_limit_exceeded", "rate_limit_error", "rate_limit_error", "RESOURCE_EXHAUSTED"},
    {"insufficient_quota", "insufficient_quota", "rate_limit_error", "RESOURCE_EXHAUSTED"},
    {"upstream_error", "api_error", "api_error", "UNAVAILABLE"},
    {"upstream_timeout", "api_error", "api_error", "DEADLINE_EXCEEDED"},
    {"not_found", "invalid_request_error", "not_found_error", "NOT_FOUND"},
    {"method_not_allowed", "invalid_request_error", NULL, NULL},
    {"unavailable", "api_error", "api_error", "UNAVAILABLE"},
};

/* The names of code in the three shapes; an unknown code or a NULL entry falls back on the
 * status: OpenAI api_error, Anthropic api_error / invalid_request_error, Gemini UNAVAILABLE /
 * INVALID_ARGUMENT; Anthropic says overloaded_error for every 503 and 529. */
static struct error_names names_of(int status, const char *code)
{
    struct error_names n = {code, NULL, NULL, NULL};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(names[i].code, code) == 0) {
            n = names[i];
            break;
        }
    if (n.openai == NULL)
        n.openai = "api_error";
    if (n.anthropic == NULL)
        n.anthropic = status >= 500 ? "api_error" : "invalid_request_error";
    if (status == 503 || status == 529)
        n.anthropic = "overloaded_error";
    if (n.gemini == NULL)
        n.gemini = status >= 500 ? "UNAVAILABLE" : "INVALID_ARGUMENT";
    return n;
}

static size_t escape_into(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (n + 7 >= cap)
            break;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

size_t errors_body(xlate_format_t fmt, char *buf, size_t cap, int status, const char *code, const char *message)
{
    char msg[512];
    escape_into(msg, sizeof(msg), message);
    struct error_names n = names_of(status, code);
    int len = fmt == XLATE_OPENAI_CHAT
                  ? snprintf(buf, cap, "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}\n",
                             msg, n.openai, code)
              : fmt == XLATE_ANTHROPIC
                  ? snprintf(buf, cap, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"%s\"}}\n", n.anthropic,
                             msg)
                  : snprintf(buf, cap, "{\"error\":{\"code\":%d,\"message\":\"%s\",\"status\":\"%s\"}}\n", status, msg,
                             n.gemini);
    if (len < 0)
        return 0;
    return (size_t)len < cap ? (size_t)len : cap - 1;
}

void errors_send(h2o_req_t *req, xlate_format_t fmt, int status, const char *code, const char *message,
                 const char *request_id)
{
    char *body = h2o_mem_alloc_pool(&req->pool, 768);
    size_t len = errors_body(fmt, body, 768, status, code, message);
    req->res.status = status;
    req->res.reason = "Error";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    if (request_id != NULL) {
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, request_id,
                              strlen(request_id));
        if (fmt == XLATE_ANTHROPIC)
            h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("request-id"), 0, NULL, request_id,
                                  strlen(request_id));
    }
    h2o_send_inline(req, body, len);
}
