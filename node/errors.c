/* errors.c — error bodies in the shape of the API called, and the responses that carry them. */
#include "node/errors.h"

#include <stdio.h>
#include <string.h>

const char *errors_openai_type(const char *code)
{
    static const struct {
        const char *code, *type;
    } map[] = {
        {"invalid_api_key", "invalid_request_error"},
        {"model_not_allowed", "permission_error"},
        {"model_not_found", "invalid_request_error"},
        {"invalid_request", "invalid_request_error"},
        {"request_too_large", "invalid_request_error"},
        {"rate_limit_exceeded", "rate_limit_error"},
        {"insufficient_quota", "insufficient_quota"},
        {"upstream_error", "api_error"},
        {"upstream_timeout", "api_error"},
        {"not_found", "invalid_request_error"},
        {"method_not_allowed", "invalid_request_error"},
        {"unavailable", "api_error"},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(map[i].code, code) == 0)
            return map[i].type;
    return "api_error";
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

size_t errors_openai_body(char *buf, size_t cap, const char *code, const char *message)
{
    char msg[512];
    escape_into(msg, sizeof(msg), message);
    int n = snprintf(buf, cap, "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}\n", msg,
                     errors_openai_type(code), code);
    if (n < 0)
        return 0;
    return (size_t)n < cap ? (size_t)n : cap - 1;
}

void errors_openai_send(h2o_req_t *req, int status, const char *code, const char *message, const char *request_id)
{
    char *body = h2o_mem_alloc_pool(&req->pool, 768);
    size_t len = errors_openai_body(body, 768, code, message);
    req->res.status = status;
    req->res.reason = "Error";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    if (request_id != NULL)
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, request_id,
                              strlen(request_id));
    h2o_send_inline(req, body, len);
}

static const char *anthropic_type(int status, const char *code)
{
    static const struct {
        const char *code, *type;
    } map[] = {
        {"invalid_api_key", "authentication_error"},
        {"model_not_allowed", "permission_error"},
        {"model_not_found", "not_found_error"},
        {"not_found", "not_found_error"},
        {"request_too_large", "request_too_large"},
        {"rate_limit_exceeded", "rate_limit_error"},
        {"insufficient_quota", "rate_limit_error"},
        {"upstream_error", "api_error"},
        {"upstream_timeout", "api_error"},
        {"unavailable", "api_error"},
    };
    if (status == 503 || status == 529)
        return "overloaded_error";
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(map[i].code, code) == 0)
            return map[i].type;
    return status >= 500 ? "api_error" : "invalid_request_error";
}

static const char *gemini_status(int status, const char *code)
{
    static const struct {
        const char *code, *status;
    } map[] = {
        {"invalid_api_key", "UNAUTHENTICATED"},
        {"model_not_allowed", "PERMISSION_DENIED"},
        {"model_not_found", "NOT_FOUND"},
        {"not_found", "NOT_FOUND"},
        {"rate_limit_exceeded", "RESOURCE_EXHAUSTED"},
        {"insufficient_quota", "RESOURCE_EXHAUSTED"},
        {"upstream_timeout", "DEADLINE_EXCEEDED"},
        {"upstream_error", "UNAVAILABLE"},
        {"unavailable", "UNAVAILABLE"},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(map[i].code, code) == 0)
            return map[i].status;
    return status >= 500 ? "UNAVAILABLE" : "INVALID_ARGUMENT";
}

size_t errors_body(xlate_format_t fmt, char *buf, size_t cap, int status, const char *code, const char *message)
{
    if (fmt == XLATE_OPENAI_CHAT)
        return errors_openai_body(buf, cap, code, message);
    char msg[512];
    escape_into(msg, sizeof(msg), message);
    int n = fmt == XLATE_ANTHROPIC
                ? snprintf(buf, cap, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"%s\"}}\n",
                           anthropic_type(status, code), msg)
                : snprintf(buf, cap, "{\"error\":{\"code\":%d,\"message\":\"%s\",\"status\":\"%s\"}}\n", status, msg,
                           gemini_status(status, code));
    if (n < 0)
        return 0;
    return (size_t)n < cap ? (size_t)n : cap - 1;
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
