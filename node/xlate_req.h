/* xlate_req: translate a chat request body between OpenAI chat completions, Anthropic messages and
 * Gemini generateContent (the request half of issue 5 item 2; responses and streams are
 * node/xlate_resp.*).
 *
 * How it works: the body is parsed strictly (yajl SAX with wiping allocators, strictly valid UTF-8,
 * nesting <= XLATE_MAX_DEPTH) into a small tree in an arena that is wiped when freed; the source
 * format's parser turns the tree into one intermediate form (system parts, messages of parts: text,
 * image, tool call, tool result; tools; tool choice; sampling options), refusing what no other
 * format can express; the target's writer checks what only it cannot express and writes the new
 * body into the caller's wipe_buf_t (parser and writer: node/jtree.h). Pure code: no I/O, no clock,
 * no globals. Error messages name fields (fixed names, indices, and a client key only when it is a
 * short identifier) and never quote content.
 *
 * Mapping (O = OpenAI chat, A = Anthropic messages, G = Gemini generateContent):
 *   system prompt     O system/developer messages (only before the first other message; later ones
 *                     are refused) <-> A "system" (string or text blocks) <-> G systemInstruction.parts
 *   roles             O user/assistant (+tool, below) <-> A user/assistant <-> G user/model; consecutive
 *                     same-role turns are merged for A and G (A requires alternation; its first turn
 *                     must be user: otherwise 400).
 *   text              string or text parts, every format.
 *   images            O image_url {url: http(s) or data:<mime>;base64,<data>; detail dropped: a
 *                     resolution hint} <-> A image source url / base64 {media_type,data} <-> G fileData
 *                     {mimeType,fileUri} / inlineData {mimeType,data}. A URL image to G becomes fileData
 *                     with the mimeType guessed from the URL's extension (png, jpg/jpeg, gif, webp,
 *                     heic, heif); no guess: 400. G fileData to O/A: only an http(s) URI with an image
 *                     mimeType that is not a Gemini Files API URI (others cannot fetch it): else 400.
 *                     Base64 to A: media type must be jpeg/png/gif/webp. Images only in user turns.
 *   temperature/top_p O temperature/top_p <-> A temperature/top_p <-> G generationConfig.temperature/topP
 *   max tokens        O max_tokens / max_completion_tokens (the larger) <-> A max_tokens (required) <->
 *                     G generationConfig.maxOutputTokens; written to O as max_tokens.
 *   stop              O stop (string or array) <-> A stop_sequences <-> G generationConfig.stopSequences
 *   top_k             A top_k <-> G topK; to O: 400.
 *   penalties, seed   O presence_penalty/frequency_penalty/seed <-> G presencePenalty/frequencyPenalty/
 *                     seed; to A: 400.
 *   JSON mode         O response_format {type:json_object} <-> G responseMimeType application/json; to A:
 *                     400. O json_schema and G responseSchema/responseJsonSchema: 400 (strictness and
 *                     schema dialects differ: not faithful). response_format text, G text/plain: dropped.
 *   tools             O tools[].function{name,description,parameters} <-> A tools[]{name,description,
 *                     input_schema} <-> G tools[].functionDeclarations[]{name,description,
 *                     parametersJsonSchema (parameters accepted on input)}; schemas copied verbatim; no
 *                     schema: {"type":"object","properties":{}}. O strict:true, A server tools (a type
 *                     other than "custom"), G tools other than functionDeclarations: 400.
 *   tool_choice       O auto/none/required/{function:{name}} <-> A auto/none/any/tool{name} <-> G
 *                     toolConfig.functionCallingConfig mode AUTO/NONE/ANY (+allowedFunctionNames: one name
 *                     = a specific tool; several: only to G, else 400).
 *   parallel calls    O parallel_tool_calls <-> A tool_choice.disable_parallel_tool_use; false to G: 400.
 *   tool calls        O assistant tool_calls[]{id,function{name,arguments: JSON text of an object}} <-> A
 *                     tool_use {id,name,input} <-> G functionCall {name,args}. G has no ids in requests:
 *                     calls from G get "call_<k>", k counting functionCalls from 0 through the whole
 *                     conversation; a G functionResponse answers the earliest unanswered call of the same
 *                     name (none: 400).
 *   tool results      O tool messages {tool_call_id, content} <-> A user tool_result blocks <-> G user
 *                     functionResponse {name (recovered from the matching call), response}. Text to G is
 *                     {"content": text}; a G response {"content": <string>} comes back as that text, any
 *                     other response object as its JSON text. A results with is_error or images: 400.
 *                     A result whose id matches no earlier call: 400.
 *   user              O user <-> A metadata.user_id; to G dropped (an abuse-monitoring id, not meaning).
 *   stream            O stream (+stream_options.include_usage true, so usage can be billed) <-> A stream;
 *                     G: in the URL (the caller's `stream` argument); never in a G body.
 * Accepted and dropped (no effect on the answer's meaning): O stream_options, store, metadata,
 * service_tier auto/default, n 1, logprobs false, logit_bias {}, modalities ["text"],
 * parallel_tool_calls true, refusal null; A cache_control, citations null,
 * thinking {type:disabled}, service_tier auto, metadata (other than user_id: 400); G thoughtSignature,
 * candidateCount 1. Everything else, and every unknown field, is refused with a 400 naming it.
 * Refused because no other format has it: O n > 1, logprobs true, top_logprobs, logit_bias with
 * entries, audio, modalities other than text, reasoning_effort, prediction, web_search_options, other
 * service tiers, messages[].name, audio/file parts; A thinking, thinking/document blocks; G safetySettings,
 * thinkingConfig, candidateCount > 1, cachedContent, responseLogprobs/logprobs, other response modalities.
 *
 * from == to: a normalising copy: every top-level member is copied as parsed (unknown ones too) except
 * the model (replaced), the stream fields and the max tokens field (forced / defaulted as below). */
#ifndef LLMRELAY_NODE_XLATE_REQ_H
#define LLMRELAY_NODE_XLATE_REQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/wipe.h"

#ifndef LLMRELAY_XLATE_FORMAT_DEFINED
#define LLMRELAY_XLATE_FORMAT_DEFINED
typedef enum xlate_format { XLATE_OPENAI_CHAT = 0, XLATE_ANTHROPIC = 1, XLATE_GEMINI = 2 } xlate_format_t;
#endif

#define XLATE_MODEL_MAX 256
#define XLATE_MAX_DEPTH 128

/* What the relay routes and bills on, from the CLIENT's body. */
typedef struct xlate_req_info {
    char model[XLATE_MODEL_MAX + 1]; /* "" for Gemini: the model is in the URL path */
    bool stream;                     /* the body's "stream" (O, A); the stream argument for G */
    int64_t max_output_tokens;       /* the client's max output tokens; -1: absent */
    size_t prompt_bytes;             /* decoded bytes of every string but the model and image payloads: the
                                        input bound */
    bool has_images;
} xlate_req_info_t;

/* Parses body (borrowed; format `from`) and appends the equivalent request in format `to` to out.
 * upstream_model (borrowed, NUL-terminated) is written as "model" for O and A targets (ignored for G:
 * the caller builds the URL). Max output tokens: force_max_output when > 0, else the client's value,
 * else (A target, where it is required) default_max_output when > 0, else 400. stream: used only when
 * from == XLATE_GEMINI (the URL decides); otherwise the body's flag is used. info may be NULL.
 * Returns 0; -EINVAL with a client-safe message in err (always NUL-terminated when errlen > 0);
 * -E2BIG when out's max is reached; -ENOMEM. On error out may hold a partial body (wipe it). */
int xlate_request(xlate_format_t from, xlate_format_t to, const uint8_t *body, size_t len, const char *upstream_model,
                  int64_t force_max_output, int64_t default_max_output, bool stream, wipe_buf_t *out,
                  xlate_req_info_t *info, char *err, size_t errlen);

/* "openai", "anthropic", "gemini". */
const char *xlate_req_format_name(xlate_format_t f);

#endif
