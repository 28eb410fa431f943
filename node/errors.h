/* errors.h — error answers in the shape of the API called (OpenAI, Anthropic, Gemini).
 *
 * Messages are the relay's own words: never a quote of request content, never a secret.
 * The body is allocated from the request's pool and holds no content. */
#ifndef LLMRELAY_NODE_ERRORS_H
#define LLMRELAY_NODE_ERRORS_H

#include <h2o.h>
#include <stddef.h>

#include "node/xlate_req.h" /* xlate_format_t */

/* An error body in the shape of format fmt (DESIGN.md's table). `code` is one of the
 * contract's (OpenAI) codes: invalid_api_key, model_not_allowed, model_not_found,
 * invalid_request, request_too_large, rate_limit_exceeded, insufficient_quota,
 * upstream_error, upstream_timeout, not_found, method_not_allowed, unavailable.
 *   OpenAI     {"error":{"message","type","param":null,"code"}}
 *   Anthropic  {"type":"error","error":{"type","message"}}: invalid_api_key ->
 *              authentication_error, model_not_allowed -> permission_error, model_not_found /
 *              not_found -> not_found_error, request_too_large -> request_too_large, rate
 *              limits and budgets -> rate_limit_error, 503 and 529 -> overloaded_error, other
 *              upstream failures -> api_error, the rest -> invalid_request_error.
 *   Gemini     {"error":{"code":status,"message","status"}}: UNAUTHENTICATED,
 *              PERMISSION_DENIED, NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
 *              UNAVAILABLE, DEADLINE_EXCEEDED.
 * Returns the number of bytes written to buf (truncated JSON is never produced: the message
 * is cut first). */
size_t errors_body(xlate_format_t fmt, char *buf, size_t cap, int status, const char *code, const char *message);

/* Sends a complete error response: status, content-type, x-request-id (when given; Anthropic
 * answers also `request-id`) and the body of errors_body. */
void errors_send(h2o_req_t *req, xlate_format_t fmt, int status, const char *code, const char *message,
                 const char *request_id);

#endif
