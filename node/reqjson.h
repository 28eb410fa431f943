/* reqjson: inspect and rewrite the JSON body of an OpenAI-format request.
 *
 * reqjson_inspect validates a body strictly (yajl: valid JSON, strictly valid UTF-8 in every
 * string, no trailing garbage, nesting at most REQJSON_MAX_DEPTH) and extracts what the
 * relay routes and bills on. reqjson_rewrite re-emits the body with the relay's changes to
 * top-level fields only; everything else keeps its meaning exactly (key order kept, numbers
 * copied from their original text, strings re-encoded by yajl_gen; whitespace is not kept).
 *
 * Rules enforced by both: the body is a JSON object; "model" is required, a string of
 * 1..REQJSON_MODEL_MAX bytes without control characters; "stream" and "store" are booleans,
 * "stream_options" an object, "stream_options.include_usage" a boolean, and the endpoint's
 * max-token fields non-negative integers — each may also be null, which counts as absent.
 * A top-level key the relay interprets (model, stream, stream_options, store and the
 * endpoint's max-token fields) may appear only once, so the upstream cannot see a different
 * value than the relay did.
 *
 * Error messages are safe to show to a client and to log: they name only fixed key names and
 * byte offsets, never request content. Every yajl handle wipes what it frees. No I/O, no
 * globals. */
#ifndef LLMRELAY_NODE_REQJSON_H
#define LLMRELAY_NODE_REQJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/wipe.h"

#define REQJSON_MODEL_MAX 256
#define REQJSON_MAX_DEPTH 128

typedef enum { REQJSON_CHAT, REQJSON_COMPLETIONS, REQJSON_EMBEDDINGS, REQJSON_RESPONSES } reqjson_endpoint_t;

typedef struct reqjson_info {
    char model[REQJSON_MODEL_MAX + 1]; /* NUL-terminated copy of the top-level "model" */
    bool has_model;
    bool stream;               /* top-level "stream" is true */
    int include_usage;         /* stream_options.include_usage: -1 absent or null, 0 false, 1 true */
    int store;                 /* top-level "store": -1 absent or null, 0 false, 1 true */
    int64_t max_output_tokens; /* the endpoint's max field (chat: max_tokens, max_completion_tokens — the
                                  larger if both; completions: max_tokens; responses: max_output_tokens;
                                  embeddings: none); -1 if none */
    size_t prompt_bytes;       /* decoded bytes of every string value except the top-level "model", plus 4
                                  per number below the top level (token-id arrays): an upper bound for the
                                  input, used to estimate tokens */
} reqjson_info_t;

/* Validates body (borrowed) and fills *info. Returns 0, or -EINVAL with a message in err
 * (always NUL-terminated when errlen > 0), or -ENOMEM. */
int reqjson_inspect(reqjson_endpoint_t ep, const uint8_t *body, size_t len, reqjson_info_t *info, char *err,
                    size_t errlen);

typedef struct reqjson_rewrite {
    const char *model;                 /* replace the top-level "model" value (NULL: keep); borrowed, valid UTF-8 */
    bool include_usage;                /* chat/completions with "stream": true: make stream_options.include_usage
                                          true (added, merged into or replaced in "stream_options") */
    bool store_false_by_default;       /* responses: "store": false when the client sent none (or null) */
    int64_t default_max_output_tokens; /* > 0: when the client gave no max, add "max_tokens" (chat,
                                          completions) or "max_output_tokens" (responses); 0: don't */
    const reqjson_info_t *info;        /* reqjson_inspect's result for this same body, to skip a second
                                          inspection; NULL: reqjson_rewrite inspects the body itself */
} reqjson_rewrite_t;

/* Writes the rewritten body to out (appended; out keeps ownership, its max bounds the size).
 * When nothing needs to change the body is copied as is. Returns 0; -EINVAL with err as in
 * reqjson_inspect; -E2BIG if out's max is reached; -ENOMEM. On error out may hold a partial
 * body: the caller resets it (wipe_buf_reset). */
int reqjson_rewrite(reqjson_endpoint_t ep, const uint8_t *body, size_t len, const reqjson_rewrite_t *rw,
                    wipe_buf_t *out, char *err, size_t errlen);

#endif
