/* usage: exact token usage from OpenAI-format responses, and the estimate used without it.
 *
 * The relay bills what the upstream reports. usage_scan_* reads a whole (non-stream) JSON
 * response fed in arbitrary pieces, never buffering it; usage_scan_chunk and its wrappers
 * read one SSE event's data (a complete JSON document). Both look for the top-level "usage"
 * object, or the one inside a top-level "response" object (Responses API events), and read
 * either naming:
 *   chat / completions / embeddings: prompt_tokens, completion_tokens,
 *       prompt_tokens_details.cached_tokens, completion_tokens_details.reasoning_tokens
 *   Responses API: input_tokens, output_tokens, input_tokens_details.cached_tokens,
 *       output_tokens_details.reasoning_tokens
 * "usage": null (or no usage) means not found; if several usage objects appear the last one
 * wins. Counts that are not non-negative integers are read as 0.
 *
 * Content bytes (for the estimate only): decoded bytes of string values under the keys
 * content, text, refusal, reasoning_content, arguments and delta anywhere inside the
 * top-level "choices" or "output" arrays (down to USAGE_KEY_DEPTH), plus a top-level string
 * "delta" (Responses *.delta events): chat deltas and messages, completion texts, tool-call
 * arguments. The full texts repeated by Responses *.done and response.completed events are
 * not counted again.
 *
 * The scanner wipes what it held when it is freed. No I/O, no globals. */
#ifndef LLMRELAY_NODE_USAGE_H
#define LLMRELAY_NODE_USAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define USAGE_KEY_DEPTH 8    /* keys are told apart down to this nesting depth */
#define USAGE_MAX_DEPTH 1024 /* deeper JSON is rejected */

typedef struct usage {
    int64_t input_tokens; /* includes cached_input_tokens, as the upstream reports it */
    int64_t cached_input_tokens;
    int64_t output_tokens; /* includes reasoning_tokens */
    int64_t reasoning_tokens;
    bool found;
} usage_t;

/* Streaming extractor over one whole JSON response body. Opaque; owned by the caller
 * between usage_scan_init and usage_scan_free. */
typedef struct usage_scan usage_scan_t;

/* 0 or -ENOMEM. */
int usage_scan_init(usage_scan_t **out);
/* Feeds len bytes (borrowed for the call). 0, or -EINVAL once the JSON is invalid (or nested
 * deeper than USAGE_MAX_DEPTH): later feeds are ignored and return it again. */
int usage_scan_feed(usage_scan_t *s, const uint8_t *buf, size_t len);
/* End of body: fills *out (found == false if the body was invalid, truncated or had no
 * usage). Returns 0 or -EINVAL. */
int usage_scan_finish(usage_scan_t *s, usage_t *out);
/* Content bytes seen so far (see above), valid JSON or not. */
size_t usage_scan_content_bytes(const usage_scan_t *s);
/* Wipes and frees; NULL is a no-op. */
void usage_scan_free(usage_scan_t *s);

/* What one SSE event's data tells. */
typedef struct usage_chunk {
    usage_t usage;
    bool usage_only;      /* "choices": [] with a non-null usage: the extra chunk include_usage adds */
    bool terminal;        /* "type" is response.completed, response.incomplete or response.failed */
    size_t content_bytes; /* see above */
} usage_chunk_t;

/* Reads one complete JSON document (borrowed). 0, or -EINVAL if it is not valid JSON (then
 * *out holds what was read before the error, with usage.found false), -ENOMEM. */
int usage_scan_chunk(const uint8_t *json, size_t len, usage_chunk_t *out);

/* Wrappers of usage_scan_chunk for chat/completions chunks and Responses API events. */
int usage_from_chat_chunk(const uint8_t *json, size_t len, usage_t *out, bool *usage_only);
int usage_from_responses_event(const uint8_t *json, size_t len, usage_t *out, bool *terminal);
int usage_content_bytes(const uint8_t *json, size_t len, size_t *bytes);

/* Only for when no usage can be had (upstream never reported it): input = ceil(prompt_bytes /
 * 4), output = ceil(output_bytes / 4), cached and reasoning 0, found = false. Records made
 * from it are marked estimated. */
void usage_estimate(size_t prompt_bytes, size_t output_bytes, usage_t *out);

#endif
