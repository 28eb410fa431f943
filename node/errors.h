/* errors.h — error answers in the shape of the API called (OpenAI for now).
 *
 * Messages are the relay's own words: never a quote of request content, never a secret.
 * The body is allocated from the request's pool and holds no content. */
#ifndef LLMRELAY_NODE_ERRORS_H
#define LLMRELAY_NODE_ERRORS_H

#include <h2o.h>
#include <stddef.h>

/* OpenAI shape: {"error":{"message":..,"type":..,"param":null,"code":..}}. `code` is one
 * of the contract's codes (invalid_api_key, model_not_allowed, model_not_found,
 * invalid_request, request_too_large, rate_limit_exceeded, insufficient_quota,
 * upstream_error, upstream_timeout, not_found, method_not_allowed, ...). Returns the
 * number of bytes written to buf (truncated JSON is never produced: the message is cut
 * first). */
size_t errors_openai_body(char *buf, size_t cap, const char *code, const char *message);

/* The OpenAI `type` that goes with a code. */
const char *errors_openai_type(const char *code);

/* Sends a complete error response: status, content-type, x-request-id (when given) and
 * the OpenAI-shaped body. */
void errors_openai_send(h2o_req_t *req, int status, const char *code, const char *message, const char *request_id);

#endif
