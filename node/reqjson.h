/* reqjson: inspect and rewrite the JSON body of an OpenAI-format request.
 *
 * reqjson_inspect validates a body strictly (yajl: valid JSON, strictly valid UTF-8 in every
 * string, no trailing garbage, nesting at most REQJSON_MAX_DEPTH), extracts what the relay
 * routes and bills on, and notes where the values the relay may change lie in the body.
 * reqjson_rewrite makes the relay's changes to top-level fields (and to
 * "stream_options.include_usage") by copying the body byte for byte and splicing in only the
 * edited values and the added members: every other byte, whitespace, number text and string
 * escape included, stays exactly as the client sent it.
 *
 * Rules (reqjson_inspect's, which reqjson_rewrite runs when given no info): the body is a
 * JSON object; "model" is required, a string of 1..REQJSON_MODEL_MAX bytes without control
 * characters; "stream" and "store" are booleans, "stream_options" an object,
 * "stream_options.include_usage" a boolean, and the endpoint's max-token fields non-negative
 * integers — each may also be null, which counts as absent. A top-level key the relay
 * interprets (model, stream, stream_options, store and the endpoint's max-token fields) may
 * appear only once, so the upstream cannot see a different value than the relay did.
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

/* [start, end) byte offsets of a value's text in the inspected body; end == 0: not present. */
typedef struct reqjson_span {
    size_t start, end;
} reqjson_span_t;

/* Where reqjson_rewrite splices its edits in: offsets into the body reqjson_inspect saw. */
typedef struct reqjson_spans {
    size_t body_len;               /* length of that body */
    reqjson_span_t model;          /* top-level "model" value, quotes included */
    reqjson_span_t stream_options; /* top-level "stream_options" value: an object or null */
    bool stream_options_is_object; /* (its closing '}' is at stream_options.end - 1) */
    bool stream_options_empty;     /* an object without members */
    reqjson_span_t include_usage;  /* stream_options.include_usage value */
    reqjson_span_t store;          /* top-level "store" value */
    reqjson_span_t max_output;     /* value of the max field reqjson_rewrite adds: "max_tokens" (chat,
                                      completions) or "max_output_tokens" (responses) */
    size_t close;                  /* the top-level object's closing '}' */
    bool has_members;              /* the top-level object has a member */
} reqjson_spans_t;

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
    reqjson_spans_t spans;     /* for reqjson_rewrite; offsets only, so the info may be copied */
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
    const reqjson_info_t *info;        /* reqjson_inspect's result for this same body and endpoint: the body is
                                          then neither parsed nor validated again (an info whose spans do not
                                          fit the body is ignored); NULL: reqjson_rewrite inspects the body */
} reqjson_rewrite_t;

/* Writes the rewritten body to out (appended; out keeps ownership, its max bounds the size).
 * A replaced value is overwritten in place (whitespace around it kept); an added member goes
 * just before the closing '}' of its object ("stream_options" or the top level), compact and
 * after a ',' if the object has members. When nothing needs to change the body is copied as
 * is. Returns 0; -EINVAL with err as in reqjson_inspect; -E2BIG if out's max is reached;
 * -ENOMEM. On error out may hold a partial body: the caller resets it (wipe_buf_reset). */
int reqjson_rewrite(reqjson_endpoint_t ep, const uint8_t *body, size_t len, const reqjson_rewrite_t *rw,
                    wipe_buf_t *out, char *err, size_t errlen);

#endif
