/* xlate_resp: translate chat answers between OpenAI chat completions, Anthropic messages and Gemini
 * generateContent — whole answers, streams event by event, and error bodies (the response half of
 * issue 5 item 2; requests are node/xlate_req.*).
 *
 * How it works: an upstream JSON document (a whole answer, or one stream event's data) is parsed
 * strictly (node/jtree: yajl SAX with wiping allocators, yajl's UTF-8 check, nesting <= XLATE_RESP_MAX_DEPTH)
 * into a small tree in an arena that is wiped when freed. A whole answer becomes one intermediate
 * form (ordered text and tool-call blocks, finish reason, usage) that the client's writer turns
 * into its body. A stream event becomes a few operations (text piece, tool call start / argument
 * piece / end, finish, usage, end of message, error) that drive the client side's state machine,
 * which appends complete client events. Output JSON is written by a small writer straight into the
 * caller's wipe_buf_t. Pure code: no I/O, no clock, no globals. Error messages name fields and
 * offsets, never content.
 *
 * Finish reasons (one normal form, then each format's word):
 *   normal form   OpenAI in / out          Anthropic in / out            Gemini in / out
 *   stop          stop / stop              end_turn / end_turn           STOP / STOP
 *   stop_seq      - / stop                 stop_sequence / stop_sequence - / STOP
 *   length        length / length          max_tokens,                   MAX_TOKENS / MAX_TOKENS
 *                                          model_context_window_exceeded
 *                                          / max_tokens
 *   tool          tool_calls, function_call tool_use / tool_use         (STOP with a functionCall part)
 *                 / tool_calls                                          / STOP
 *   filter        content_filter /         refusal / refusal             SAFETY, RECITATION, BLOCKLIST,
 *                 content_filter                                        PROHIBITED_CONTENT, SPII,
 *                                                                       IMAGE_SAFETY, promptFeedback.
 *                                                                       blockReason / SAFETY
 *   pause         - / stop                 pause_turn / pause_turn       - / OTHER
 *   other         anything else / stop     anything else / end_turn      OTHER, LANGUAGE,
 *                                                                       MALFORMED_FUNCTION_CALL, ... / OTHER
 * A Gemini answer whose parts hold a functionCall finishes "tool" whatever its finishReason says
 * (Gemini reports STOP). Anthropic's stop_sequence value is kept only Anthropic to Anthropic.
 *
 * Usage, normalised (xlate_usage_t; what the relay bills):
 *   OpenAI     input = prompt_tokens, cached = prompt_tokens_details.cached_tokens,
 *              output = completion_tokens, reasoning = completion_tokens_details.reasoning_tokens.
 *   Anthropic  input = input_tokens + cache_read_input_tokens + cache_creation_input_tokens,
 *              cached = cache_read_input_tokens, cache_creation = cache_creation_input_tokens,
 *              output = output_tokens, reasoning 0 (not reported apart). Streams: message_start gives
 *              the input counts and a first output count; every message_delta's counts are
 *              CUMULATIVE: the last one seen replaces (never adds to) what was known.
 *   Gemini     input = promptTokenCount + toolUsePromptTokenCount (cached content is part of the
 *              prompt count), cached = cachedContentTokenCount, output = candidatesTokenCount +
 *              thoughtsTokenCount, reasoning = thoughtsTokenCount; usageMetadata may come on several
 *              stream chunks, each cumulative: the last one wins.
 *   Written to clients: OpenAI prompt_tokens = input, completion_tokens = output, total = both, the
 *   details as above; Anthropic input_tokens = input - cached - cache_creation, cache_read =
 *   cached, cache_creation, output_tokens = output; Gemini promptTokenCount = input,
 *   candidatesTokenCount = output - reasoning, thoughtsTokenCount = reasoning,
 *   cachedContentTokenCount = cached, totalTokenCount = input + output.
 *
 * What is dropped on the way (it carries no answer text): Anthropic thinking / redacted_thinking
 * blocks and their deltas (their tokens are in output_tokens), Gemini parts marked "thought": true,
 * OpenAI reasoning_content, logprobs, choices other than index 0 (the request translator refuses
 * n > 1), system_fingerprint, Anthropic ping events when the client is not Anthropic. OpenAI
 * "refusal" text is written as answer text.
 *
 * Ids: the client sees ids made from id_seed: "chatcmpl-<24>" (OpenAI), "msg_<24>" (Anthropic),
 * a 24-character responseId (Gemini). Tool calls keep their upstream id; Gemini's functionCalls
 * have none (unless the upstream gave one): they get "call_<12 from id_seed>_<k>", k counting from
 * 0 in the answer. Calls written to a Gemini client carry no id (Gemini clients do not send ids
 * back). The model shown is the caller's `model` (the name the client asked for).
 *
 * Streams, per client:
 *   OpenAI     `data: {chat.completion.chunk}\n\n`: a first chunk with delta {role, content ""}, one
 *              chunk per text piece / tool call start (index, id, type, function {name, arguments
 *              ""}) / arguments piece (index, function.arguments), a last chunk with an empty delta
 *              and finish_reason, a usage chunk ("choices": []) only if the client asked for it,
 *              then `data: [DONE]\n\n`.
 *   Anthropic  `event: X\ndata: {...}\n\n`: message_start (usage: the input counts known so far and
 *              output_tokens 0 or the upstream's), per block content_block_start / content_block_delta
 *              (text_delta, input_json_delta) / content_block_stop with indices from 0, message_delta
 *              (stop_reason, stop_sequence, usage with every count, cumulative), message_stop.
 *   Gemini     `data: {GenerateContentResponse}\r\n\r\n`, or, with xlate_stream_gemini_array, the
 *              JSON-array form ("[" chunk ",\r\n" chunk ... "]"): one chunk per text piece, one per
 *              whole functionCall (arguments are gathered until the call ends, at most
 *              XLATE_RESP_MAX_TOOL_ARGS bytes, and must then be a JSON object), and a last chunk with
 *              finishReason and usageMetadata.
 *   The closing events (finish chunk, message_delta, last Gemini chunk) are written when the
 *   upstream's message ends: OpenAI `[DONE]`, Anthropic message_stop, else xlate_stream_finish; so
 *   usage that an upstream sends after its finish reason (OpenAI's usage chunk) is in them.
 *   Tool calls must come one after the other (a call's arguments after the next call started:
 *   -EINVAL), as every upstream sends them.
 *   Errors in the stream (Anthropic `event: error`, an OpenAI or Gemini `{"error": ...}` data)
 *   become the client's in-stream error: OpenAI `data: {"error":{message,type,param,code}}`,
 *   Anthropic `event: error` {"type":"error","error":{type,message}}, Gemini `data: {"error":{code,
 *   message,status}}`; the stream then ends (later events and finish append nothing).
 *
 * Pass-through (up == client): bodies are copied unchanged; stream events are written back
 * unchanged (the same event name and data) — except OpenAI's usage-only chunk, dropped when the
 * client did not ask for usage — and usage is read on the way. */
#ifndef LLMRELAY_NODE_XLATE_RESP_H
#define LLMRELAY_NODE_XLATE_RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/wipe.h"

#ifndef LLMRELAY_XLATE_FORMAT_DEFINED
#define LLMRELAY_XLATE_FORMAT_DEFINED
typedef enum xlate_format { XLATE_OPENAI_CHAT = 0, XLATE_ANTHROPIC = 1, XLATE_GEMINI = 2 } xlate_format_t;
#endif

#define XLATE_RESP_MAX_DEPTH 128
#define XLATE_RESP_MAX_TOOL_ARGS (4 * 1024 * 1024) /* gathered arguments of one call (Gemini clients) */
#define XLATE_RESP_MODEL_MAX 256

/* Normalised usage (see above). Counts are never negative. */
typedef struct xlate_usage {
    bool found;
    int64_t input_tokens;        /* all input: cached and cache writes included */
    int64_t cached_input_tokens; /* input read from a cache */
    int64_t cache_creation_input_tokens; /* input written to a cache (Anthropic only; else 0) */
    int64_t output_tokens;       /* all output: reasoning included */
    int64_t reasoning_tokens;
} xlate_usage_t;

/* Non-stream: translates a whole upstream answer body (format up, borrowed) into the client's format,
 * appended to out (out's max bounds it). model: shown to the client (NUL-terminated, at most
 * XLATE_RESP_MODEL_MAX bytes); id_seed: makes the ids; created_s: OpenAI's "created".
 * Returns 0 (*usage filled, found == false if the answer had none); -EINVAL if the answer cannot be
 * read or translated, with a message in err (names fields and offsets only; always NUL-terminated
 * when errlen > 0); -E2BIG (out's max); -ENOMEM. On error out is left as it was. */
int xlate_response(xlate_format_t up, xlate_format_t client, const uint8_t *body, size_t len, const char *model,
                   uint64_t id_seed, int64_t created_s, wipe_buf_t *out, xlate_usage_t *usage, char *err,
                   size_t errlen);

/* Reads the usage of a whole answer in format fmt (no translation). 0 or -EINVAL. */
int xlate_usage_of(xlate_format_t fmt, const uint8_t *body, size_t len, xlate_usage_t *usage);

/* Stream translator. Owns a copy of model; all its state is small except one gathered tool call's
 * arguments (Gemini clients only, bounded as above). Wiped when freed. */
typedef struct xlate_stream xlate_stream_t;

/* client_wants_usage: an OpenAI client asked stream_options.include_usage (other clients always get
 * usage). 0, -EINVAL (model too long), -ENOMEM. */
int xlate_stream_new(xlate_format_t up, xlate_format_t client, const char *model, uint64_t id_seed, int64_t created_s,
                     bool client_wants_usage, xlate_stream_t **out);
/* Gemini client: write the JSON-array stream (no alt=sse) instead of SSE. Call before the first event. */
void xlate_stream_gemini_array(xlate_stream_t *s);

/* One upstream SSE event: its `event:` name (NULL or event_len 0: none) and its data (borrowed).
 * Appends zero or more complete client events to out. An event without data (a comment, a
 * keep-alive) is ignored. Returns 0; -EINVAL (malformed or out-of-order upstream event: nothing
 * appended; the caller may end the stream with xlate_stream_fail); -E2BIG; -ENOMEM. After the
 * message ended or an error event, later events append nothing. */
int xlate_stream_event(xlate_stream_t *s, const char *event, size_t event_len, const uint8_t *data, size_t len,
                       wipe_buf_t *out);

/* End of the upstream stream: appends the closing events not yet written (see above). If the
 * upstream ended before its message did (no finish reason, no end marker), appends the client's
 * in-stream error instead and returns -EPIPE. Pass-through appends only the array's "]" (Gemini
 * array form). 0 or as above. Appends nothing the second time. */
int xlate_stream_finish(xlate_stream_t *s, wipe_buf_t *out);

/* Ends the stream with the client's in-stream error (status: an HTTP status that chooses the
 * error's type and code; message: the relay's own words, no content). Later calls append nothing. */
int xlate_stream_fail(xlate_stream_t *s, int status, const char *message, wipe_buf_t *out);

/* True once the client's closing events (or an in-stream error) have been written: nothing
 * more will be appended. */
bool xlate_stream_ended(const xlate_stream_t *s);
/* Usage seen so far (the last cumulative counts). */
void xlate_stream_usage(const xlate_stream_t *s, xlate_usage_t *out);
/* Wipes and frees; NULL is a no-op. */
void xlate_stream_free(xlate_stream_t *s);

/* An upstream error answer (status, body in format up, borrowed) in the client's error shape, the
 * status kept by the caller: OpenAI {"error":{message,type,param,code}}, Anthropic {"type":"error",
 * "error":{type,message}}, Gemini {"error":{code,message,status}}. The type/code/status come from
 * the HTTP status (DESIGN.md's table: 400 invalid_request, 401 invalid_api_key, 403, 404, 413,
 * 429 rate limit, 5xx upstream_error, 504 upstream_timeout, 529 overloaded); the message is the
 * upstream's error message (at most 1024 bytes, cut on a character boundary) or, when the body has
 * none, "upstream error (status N)". up == client and the body is a JSON object with an "error" object:
 * the body is copied unchanged. 0, -E2BIG, -ENOMEM. */
int xlate_error(xlate_format_t up, xlate_format_t client, int status, const uint8_t *body, size_t len,
                wipe_buf_t *out);

#endif
