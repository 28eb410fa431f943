/*
 * mockprovider: a fast, deterministic mock of the OpenAI, Anthropic and Gemini wire formats,
 * the upstream that llmrelay's end-to-end, chaos and benchmark tests talk to, and the ground
 * truth that billing is compared with (GET /mock/stats counts exactly the tokens it served,
 * per upstream key).
 *
 * Endpoints: OpenAI /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses,
 * GET /v1/models (key in `Authorization: Bearer`); Anthropic POST /v1/messages (key in
 * `x-api-key` only; `anthropic-version` recorded, not required; `max_tokens` required);
 * Gemini POST /v1beta/models/{model}:generateContent and :streamGenerateContent (key in
 * `x-goog-api-key` or `?key=`; `?alt=sse` gives SSE `data: {..}\r\n\r\n` chunks, without it
 * a JSON array `[{..}\n,{..}\n]`). Each format answers, streams and fails in its own shape.
 *
 * How it works: one h2o 2.2.5 server (libuv flavour) on one loop, cleartext HTTP/1.1 + h2c
 * (prior knowledge) or TLS 1.2/1.3 with ALPN h2 + http/1.1. Each request body is parsed with
 * yajl_tree into a "plan" (format, model, stream, token counts, faults); a plain answer is
 * written at once into the request pool, a delayed or streamed answer gets a heap-allocated
 * mock_stream with its own uv timer. A stream obeys the h2o generator contract: exactly one
 * h2o_send per proceed, and the bytes sent stay untouched in mock_stream.out until the next
 * proceed or the request's pool dispose, which is also the only place a mock_stream is
 * released (timer closed, buffers wiped and freed in the close callback), whether the client
 * finished, reset the stream or disconnected.
 *
 * Deterministic token counts (what billing tests compare with):
 *   - B = total byte length of the string values of the request's prompt: OpenAI: every
 *     `content` string of `messages` and the `text` of content-part arrays, `prompt` (string
 *     or array), `input` (string, array of strings, or response items with `content`/`text`;
 *     each integer of a token array counts as 4 bytes), and `instructions`. Anthropic:
 *     `system` (string or text blocks) and every message's content (string, text blocks, and
 *     the content of tool_result blocks). Gemini: the `text` of every part of
 *     `systemInstruction` and of every `contents[]` entry.
 *   - input tokens  P = max(1, ceil(B / 4))   (so P never exceeds the prompt's byte count).
 *   - output tokens C = --chunks (default 8), or the `chunks=` directive / global config,
 *     capped by `max_tokens` / `max_completion_tokens` / `max_output_tokens` /
 *     generationConfig.maxOutputTokens when given (then finish_reason "length", stop_reason
 *     "max_tokens", finishReason "MAX_TOKENS", or responses status "incomplete").
 *     Embeddings: C = 0. A tool call (directive tool=NAME; chat, messages, Gemini only) has
 *     the fixed arguments MOCK_TOOL_ARGS and C = 1 + ceil(argument bytes / 4) = 5, never
 *     capped; streamed as one piece naming the call then one piece per 4 argument bytes
 *     (Gemini: the whole functionCall in one chunk).
 *   - token i is " tok<i>", except token 1 is the --reply-text when it is set.
 *   - thoughts=N adds N reasoning tokens (OpenAI reasoning_tokens within completion_tokens,
 *     Anthropic within output_tokens, Gemini thoughtsTokenCount beside candidatesTokenCount);
 *     they are served output. cached=N (at most P) reports N of the P input tokens as cached
 *     (OpenAI cached_tokens and Gemini cachedContentTokenCount within P; Anthropic
 *     cache_read_input_tokens N and input_tokens P - N).
 *   - stats count what was served: a plain 200 answer counts P + C + thoughts; a stream counts
 *     P and the thoughts when its headers go out and each token as it is handed to h2o (a cut
 *     stream counts its K tokens; a streamed Gemini tool call counts C with its chunk); an
 *     error answer counts 0 tokens and one error; a cut stream and a refused request also
 *     count one error. `requests` counts every request to a billed endpoint (all but models)
 *     under the key it presented (`""` when none), rejected ones included. `connections`
 *     counts TCP connections, each attributed to the key of its first API request;
 *     totals.connections counts every accepted connection (also those that only call /mock/
 *     endpoints).
 *
 * Directives: `[[mock:k=v,...]]` anywhere in the prompt text (first one found wins) with keys
 * chunks, delay_ms, first_byte_delay_ms, status, cut_after, usage, thoughts, cached, tool,
 * quota (1: the format's spend-limit error, see build_quota_error) and the word `refuse` (close
 * the connection without an answer). Per-key fault scripts (POST /mock/script {"key", "script":
 * [outcome, ...], "then": outcome | "loop": true}, outcomes in the same syntax plus "ok") give
 * each request of that key that passed auth the next outcome. Precedence, field by field:
 * command line < global config (POST /mock/config) < script outcome < directive. status=0 or
 * 200 means "no fault".
 *
 * Privacy: the mock logs method, path, status, model, key suffix and counts only; buffers
 * that held request or answer text are wiped before being freed. GET /mock/requests keeps,
 * in memory, shapes only (field names, part types, tool names, prompt byte counts).
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <uv.h>
#include <yajl/yajl_tree.h>

#define H2O_USE_LIBUV 1
#include <h2o.h>

#define MOCK_MAX_BODY (64u * 1024 * 1024)
#define MOCK_MAX_CHUNKS 100000
#define MOCK_MAX_DELAY_MS 600000
#define MOCK_MAX_KEYS 4096
#define MOCK_KEY_SLOTS 8192 /* open addressing, at most half full */
#define MOCK_MAX_KEY_LEN 256
#define MOCK_RING 256
#define MOCK_CONN_BUCKETS 4096
#define MOCK_MAX_MODELS 64
#define MOCK_MODEL_LEN 128
#define MOCK_BATCH_BYTES 16384 /* undelayed streams: tokens per h2o_send up to this size */
#define MOCK_EMBED_DIM 8
#define MOCK_MAX_EMBED_INPUTS 4096
#define MOCK_MAX_SCRIPTS 128 /* keys with a fault script */
#define MOCK_MAX_STEPS 64    /* outcomes per script */
#define MOCK_TOOL_LEN 64
#define MOCK_TOOL_ARGS "{\"city\":\"Paris\"}" /* the fixed arguments of every mock tool call */
#define MOCK_TOOL_PIECE 4                    /* streamed argument bytes per token */
#define MOCK_DESC_LEN 512                    /* /mock/requests: field names, part types, tool names */

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* ---------- growable byte buffer (owned data, wiped when grown or freed) ---------- */

struct sbuf {
    char *data; /* owned, malloc'd */
    size_t len;
    size_t cap;
};

static void sb_reserve(struct sbuf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 512;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = malloc(cap);
    if (p == NULL) {
        fputs("mockprovider: out of memory\n", stderr);
        abort();
    }
    if (b->data != NULL) {
        memcpy(p, b->data, b->len);
        explicit_bzero(b->data, b->cap);
        free(b->data);
    }
    b->data = p;
    b->cap = cap;
}

static void sb_free(struct sbuf *b)
{
    if (b->data != NULL) {
        explicit_bzero(b->data, b->cap);
        free(b->data);
    }
    b->data = NULL;
    b->len = b->cap = 0;
}

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void sb_adds(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->data ? b->data + b->len : NULL, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= b->cap - b->len) {
        sb_reserve(b, (size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

/* JSON string body (no quotes) with the escapes RFC 8259 requires. */
static void sb_json_escape(struct sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    sb_reserve(b, n + 2);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_add(b, e, 2);
        } else if (c == '\n') {
            sb_add(b, "\\n", 2);
        } else if (c == '\r') {
            sb_add(b, "\\r", 2);
        } else if (c == '\t') {
            sb_add(b, "\\t", 2);
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            sb_add(b, e, 6);
        } else {
            sb_reserve(b, 1);
            b->data[b->len++] = (char)c;
        }
    }
}

static void sb_json_str(struct sbuf *b, const char *s, size_t n)
{
    sb_add(b, "\"", 1);
    sb_json_escape(b, s, n);
    sb_add(b, "\"", 1);
}

/* ---------- configuration and state ---------- */

/* A set of optional fault/shape overrides: command-line defaults < global config < directive. */
struct mock_overrides {
    int has_chunks, has_delay, has_first_byte_delay, has_status, has_cut_after, has_usage;
    long chunks, delay_ms, first_byte_delay_ms, status, cut_after, usage;
    int has_thoughts, has_cached, has_quota, has_refuse, has_tool;
    long thoughts, cached, quota, refuse;
    char tool[MOCK_TOOL_LEN]; /* "" with has_tool: no tool call */
};

enum mock_api {
    API_CHAT,
    API_COMPLETIONS,
    API_EMBEDDINGS,
    API_RESPONSES,
    API_MODELS,
    API_ANTHROPIC, /* POST /v1/messages */
    API_GEMINI,    /* POST /v1beta/models/{model}:generateContent / :streamGenerateContent */
    API_NONE
};

/* The wire format an answer (and an error) is written in. */
enum mock_format { FMT_OPENAI, FMT_ANTHROPIC, FMT_GEMINI };

/* A per-key fault script: outcome i applies to the key's i-th next request, then `then` or a loop. */
struct key_script {
    int used;
    size_t key_len;
    char key[MOCK_MAX_KEY_LEN + 1];
    struct mock_overrides steps[MOCK_MAX_STEPS];
    size_t count, next;
    int loop;
    struct mock_overrides then; /* after the last step when not looping */
    uint64_t consumed;
};

struct key_stats {
    int used;
    size_t key_len;
    char key[MOCK_MAX_KEY_LEN + 1];
    uint64_t requests, input_tokens, output_tokens, connections, errors;
};

struct request_record {
    char method[8];
    char path[64];
    char model[MOCK_MODEL_LEN + 1];
    int stream;           /* 0/1 */
    int include_usage;    /* -1 null, 0, 1 */
    int store;            /* -1 null, 0, 1 */
    long long max_tokens; /* -1 null */
    char key_suffix[5];
    size_t key_index; /* for GET /mock/requests?key=K; SIZE_MAX: none */
    int status;       /* 0: refused (connection closed without an answer) */
    const char *auth; /* static: how the key came ("bearer", "x-api-key", "x-goog-api-key", "query", "none") */
    char anthropic_version[32];
    uint64_t prompt_bytes;
    double temperature, top_p; /* NaN: absent */
    /* shapes, never text: top-level field names, "role:type,type" per message, tool names; each \0-separated */
    char fields[MOCK_DESC_LEN], parts[MOCK_DESC_LEN], tools[MOCK_DESC_LEN];
    size_t fields_len, parts_len, tools_len;
};

/* One accepted TCP connection; the uv handle is first so the close callback can free it. */
struct conn_record {
    uv_tcp_t tcp;
    h2o_socket_t *sock; /* owned by h2o */
    struct conn_record *next;
    int attributed;
};

struct mock_server {
    uv_loop_t *loop;
    h2o_globalconf_t config;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    uv_tcp_t listener;
    uv_signal_t sigterm, sigint;
    SSL_CTX *ssl_ctx; /* owned, NULL for cleartext */

    /* command line */
    char *keys[MOCK_MAX_KEYS]; /* owned strings; NULL-terminated when --keys given */
    size_t key_count;
    int keys_given;
    long chunks, chunk_delay_ms;
    char *models[MOCK_MAX_MODELS]; /* owned */
    size_t model_count;
    const char *reply_text; /* argv, not owned */
    size_t reply_text_len;
    int quiet;

    /* runtime */
    struct mock_overrides global;
    uint64_t id_base, id_counter;
    uint64_t stats_generation;   /* bumped by /mock/reset; streams from before stop counting */
    struct key_stats *key_slots; /* owned, MOCK_KEY_SLOTS + 1 (the last is the overflow slot) */
    size_t keys_used;
    uint64_t total_connections;
    struct request_record ring[MOCK_RING];
    size_t ring_next, ring_count;
    struct conn_record *conn_buckets[MOCK_CONN_BUCKETS];
    struct key_script *scripts; /* owned, MOCK_MAX_SCRIPTS */
    struct sbuf scratch; /* reused to build plain answers before they are copied to the pool */
};

struct mock_handler {
    h2o_handler_t super;
    struct mock_server *server; /* not owned */
};

/* Everything the answer depends on, decided from the request before anything is sent. */
struct mock_plan {
    enum mock_api api;
    enum mock_format format;
    char model[MOCK_MODEL_LEN + 1];
    int stream;
    int gemini_sse;       /* Gemini stream: SSE (?alt=sse) rather than a JSON array */
    int include_usage;    /* -1 absent */
    int store;            /* -1 absent */
    long long max_tokens; /* -1 absent */
    uint64_t prompt_tokens;
    uint64_t prompt_bytes;
    unsigned chunks;                               /* C, after the max_tokens cap (a tool call: its tokens) */
    unsigned units;                                /* stream steps: text tokens, or tool call pieces */
    uint64_t thoughts, cached;                     /* directive: reported thoughts / cached tokens */
    int quota;                                     /* status is the format's spend-limit error */
    int refuse;                                    /* close the connection without an answer */
    char tool[MOCK_TOOL_LEN];                      /* "" : text answer */
    int truncated;                                 /* capped by max_tokens */
    long delay_ms, first_byte_delay_ms, cut_after; /* cut_after -1: none */
    int status;                                    /* 0: success */
    int usage;                                     /* include usage in the answer */
    char id[48], item_id[48], call_id[48];
    long long created;
    size_t key_index;
};

enum { PH_START, PH_HEAD, PH_TOKENS, PH_TAIL, PH_CUT, PH_DONE };

/* A delayed or streamed answer. Heap-allocated; released only from the pool's dispose. */
struct mock_stream {
    h2o_generator_t generator;
    struct mock_server *srv; /* not owned */
    h2o_req_t *req;          /* NULL once the request is disposed */
    uv_timer_t timer;
    struct mock_plan plan;
    struct sbuf out;  /* bytes handed to h2o; untouched until the next proceed */
    struct sbuf head; /* common prefix of every chunk object */
    int phase;
    unsigned next_token; /* 1-based */
    unsigned seq;        /* responses sequence_number */
    uint64_t generation;
};

/* ---------- small helpers ---------- */

static int iov_is(h2o_iovec_t v, const char *s)
{
    size_t n = strlen(s);
    return v.len == n && memcmp(v.base, s, n) == 0;
}

static uint64_t fnv1a(const void *data, size_t n, uint64_t h)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static const char *status_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 529:
        return "Overloaded";
    default:
        return status < 500 ? "Client Error" : "Server Error";
    }
}

/* OpenAI-shaped error body for a status; message is a fixed text, never request content. */
static void build_error(struct sbuf *b, int status, const char *message)
{
    const char *type = "invalid_request_error", *code = "invalid_request";
    switch (status) {
    case 400:
        break;
    case 401:
        code = "invalid_api_key";
        if (message == NULL)
            message = "Incorrect API key provided";
        break;
    case 403:
        type = "permission_error";
        code = "permission_denied";
        break;
    case 404:
        code = "not_found";
        break;
    case 408:
        type = "timeout_error";
        code = "timeout";
        break;
    case 429:
        type = "requests";
        code = "rate_limit_exceeded";
        if (message == NULL)
            message = "Rate limit reached for requests (mock)";
        break;
    case 500:
        type = "server_error";
        code = "server_error";
        if (message == NULL)
            message = "The server had an error while processing your request (mock)";
        break;
    case 502:
        type = "server_error";
        code = "bad_gateway";
        break;
    case 503:
        type = "server_error";
        code = "service_unavailable";
        if (message == NULL)
            message = "The engine is currently overloaded (mock)";
        break;
    default:
        if (status >= 500) {
            type = "server_error";
            code = "server_error";
        }
        break;
    }
    if (message == NULL)
        message = status_reason(status);
    sb_adds(b, "{\"error\":{\"message\":");
    sb_json_str(b, message, strlen(message));
    sb_printf(b, ",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}", type, code);
}

/* Anthropic-shaped error: {"type":"error","error":{"type":T,"message":M}}. */
static void build_error_anthropic(struct sbuf *b, int status, const char *message)
{
    const char *type = "invalid_request_error";
    switch (status) {
    case 401:
        type = "authentication_error";
        if (message == NULL)
            message = "invalid x-api-key";
        break;
    case 403:
        type = "permission_error";
        break;
    case 404:
        type = "not_found_error";
        break;
    case 413:
        type = "request_too_large";
        break;
    case 429:
        type = "rate_limit_error";
        if (message == NULL)
            message = "Number of request tokens has exceeded your per-minute rate limit (mock)";
        break;
    case 504:
        type = "timeout_error";
        break;
    case 529:
        type = "overloaded_error";
        if (message == NULL)
            message = "Overloaded (mock)";
        break;
    default:
        if (status >= 500) {
            type = "api_error";
            if (message == NULL)
                message = "Internal server error (mock)";
        }
        break;
    }
    if (message == NULL)
        message = status_reason(status);
    sb_printf(b, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":", type);
    sb_json_str(b, message, strlen(message));
    sb_adds(b, "}}");
}

/* Gemini-shaped (google.rpc.Status) error: {"error":{"code":N,"message":M,"status":S}}. */
static void build_error_gemini(struct sbuf *b, int status, const char *message)
{
    const char *code = status >= 500 ? "INTERNAL" : "INVALID_ARGUMENT";
    switch (status) {
    case 401:
        code = "UNAUTHENTICATED";
        if (message == NULL)
            message = "API key not valid. Please pass a valid API key. (mock)";
        break;
    case 403:
        code = "PERMISSION_DENIED";
        break;
    case 404:
        code = "NOT_FOUND";
        break;
    case 408:
    case 504:
        code = "DEADLINE_EXCEEDED";
        break;
    case 429:
        code = "RESOURCE_EXHAUSTED";
        if (message == NULL)
            message = "Resource has been exhausted (e.g. check quota). (mock)";
        break;
    case 503:
    case 529:
        code = "UNAVAILABLE";
        if (message == NULL)
            message = "The model is overloaded. Please try again later. (mock)";
        break;
    default:
        break;
    }
    if (message == NULL)
        message = status_reason(status);
    sb_printf(b, "{\"error\":{\"code\":%d,\"message\":", status);
    sb_json_str(b, message, strlen(message));
    sb_printf(b, ",\"status\":\"%s\"}}", code);
}

/*
 * The spend-limit ("quota") error of each format; returns its status. OpenAI: 429
 * insufficient_quota. Anthropic has no 429 for it: a workspace over its spend limit gets 400
 * invalid_request_error "You have reached your specified API usage limits...". Gemini: 429
 * RESOURCE_EXHAUSTED whose message names the plan and billing details.
 */
static int build_quota_error(struct sbuf *b, enum mock_format fmt)
{
    switch (fmt) {
    case FMT_ANTHROPIC:
        build_error_anthropic(b, 400,
                              "You have reached your specified API usage limits. You will regain access on "
                              "2099-01-01 at 00:00 UTC. (mock)");
        return 400;
    case FMT_GEMINI:
        build_error_gemini(b, 429,
                           "You exceeded your current quota, please check your plan and billing details. (mock)");
        return 429;
    default:
        sb_adds(b, "{\"error\":{\"message\":\"You exceeded your current quota, please check your plan and billing "
                   "details. (mock)\",\"type\":\"insufficient_quota\",\"param\":null,"
                   "\"code\":\"insufficient_quota\"}}");
        return 429;
    }
}

static void build_error_fmt(struct sbuf *b, enum mock_format fmt, int status, const char *message)
{
    if (fmt == FMT_ANTHROPIC)
        build_error_anthropic(b, status, message);
    else if (fmt == FMT_GEMINI)
        build_error_gemini(b, status, message);
    else
        build_error(b, status, message);
}

static void add_header(h2o_req_t *req, const h2o_token_t *token, const char *value)
{
    h2o_add_header(&req->pool, &req->res.headers, token, NULL, value, strlen(value));
}

static h2o_generator_t plain_generator = {NULL, NULL};

/* Send a complete JSON answer, copied into the request pool (lives until h2o is done). */
static int send_json(h2o_req_t *req, int status, const char *body, size_t len)
{
    req->res.status = status;
    req->res.reason = status_reason(status);
    add_header(req, H2O_TOKEN_CONTENT_TYPE, "application/json");
    if (status == 429)
        add_header(req, H2O_TOKEN_RETRY_AFTER, "1");
    req->res.content_length = len;
    char *copy = h2o_mem_alloc_pool(&req->pool, len + 1);
    memcpy(copy, body, len);
    h2o_iovec_t buf = h2o_iovec_init(copy, len);
    h2o_start_response(req, &plain_generator);
    h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
    return 0;
}

static int send_error_fmt(struct mock_server *srv, h2o_req_t *req, enum mock_format fmt, int status,
                          const char *message)
{
    srv->scratch.len = 0;
    build_error_fmt(&srv->scratch, fmt, status, message);
    return send_json(req, status, srv->scratch.data, srv->scratch.len);
}

static int send_error(struct mock_server *srv, h2o_req_t *req, int status, const char *message)
{
    return send_error_fmt(srv, req, FMT_OPENAI, status, message);
}

/* ---------- stats ---------- */

static size_t key_index_get(struct mock_server *srv, const char *key, size_t len)
{
    if (len > MOCK_MAX_KEY_LEN)
        len = MOCK_MAX_KEY_LEN;
    size_t slot = fnv1a(key, len, 14695981039346656037ull) & (MOCK_KEY_SLOTS - 1);
    for (;;) {
        struct key_stats *ks = &srv->key_slots[slot];
        if (!ks->used)
            break;
        if (ks->key_len == len && memcmp(ks->key, key, len) == 0)
            return slot;
        slot = (slot + 1) & (MOCK_KEY_SLOTS - 1);
    }
    if (srv->keys_used >= MOCK_MAX_KEYS) {
        struct key_stats *ov = &srv->key_slots[MOCK_KEY_SLOTS];
        if (!ov->used) {
            ov->used = 1;
            ov->key_len = strlen("(overflow)");
            memcpy(ov->key, "(overflow)", ov->key_len + 1);
        }
        return MOCK_KEY_SLOTS;
    }
    struct key_stats *ks = &srv->key_slots[slot];
    memset(ks, 0, sizeof(*ks));
    ks->used = 1;
    ks->key_len = len;
    memcpy(ks->key, key, len);
    ks->key[len] = '\0';
    srv->keys_used++;
    return slot;
}

static void stats_add(struct mock_server *srv, size_t key_index, uint64_t generation, uint64_t in, uint64_t out,
                      int error)
{
    if (generation != srv->stats_generation)
        return;
    struct key_stats *ks = &srv->key_slots[key_index];
    ks->input_tokens += in;
    ks->output_tokens += out;
    if (error)
        ks->errors++;
}

static void stats_reset(struct mock_server *srv)
{
    memset(srv->key_slots, 0, sizeof(struct key_stats) * (MOCK_KEY_SLOTS + 1));
    srv->keys_used = 0;
    srv->total_connections = 0;
    srv->ring_next = srv->ring_count = 0;
    memset(&srv->global, 0, sizeof(srv->global));
    memset(srv->scripts, 0, sizeof(struct key_script) * MOCK_MAX_SCRIPTS);
    srv->stats_generation++;
}

static struct request_record *record_request(struct mock_server *srv, h2o_req_t *req, const struct mock_plan *plan,
                                             const char *key, size_t key_len, size_t key_index, int status)
{
    struct request_record *r = &srv->ring[srv->ring_next];
    srv->ring_next = (srv->ring_next + 1) % MOCK_RING;
    if (srv->ring_count < MOCK_RING)
        srv->ring_count++;
    memset(r, 0, sizeof(*r));
    size_t n = req->path_normalized.len < sizeof(r->path) - 1 ? req->path_normalized.len : sizeof(r->path) - 1;
    memcpy(r->path, req->path_normalized.base, n);
    n = req->method.len < sizeof(r->method) - 1 ? req->method.len : sizeof(r->method) - 1;
    memcpy(r->method, req->method.base, n);
    r->key_index = key_index;
    r->auth = "none";
    r->temperature = r->top_p = NAN;
    r->include_usage = -1;
    r->store = -1;
    r->max_tokens = -1;
    if (plan != NULL) {
        snprintf(r->model, sizeof(r->model), "%s", plan->model);
        r->stream = plan->stream;
        r->include_usage = plan->include_usage;
        r->store = plan->store;
        r->max_tokens = plan->max_tokens;
        r->prompt_bytes = plan->prompt_bytes;
    }
    size_t start = key_len > 4 ? key_len - 4 : 0;
    memcpy(r->key_suffix, key + start, key_len - start);
    r->status = status;
    if (!srv->quiet)
        fprintf(stderr, "mockprovider: %s %s status=%d key=...%s model=%s stream=%d\n", r->method, r->path, status,
                r->key_suffix, r->model, r->stream);
    return r;
}

/* ---------- connection tracking ---------- */

static size_t conn_bucket(const void *sock)
{
    uintptr_t p = (uintptr_t)sock;
    return (size_t)((p >> 4) ^ (p >> 16)) & (MOCK_CONN_BUCKETS - 1);
}

static void on_conn_closed(uv_handle_t *handle)
{
    struct conn_record *rec = (struct conn_record *)handle;
    struct mock_server *srv = handle->loop->data;
    if (rec->sock != NULL) {
        struct conn_record **pp = &srv->conn_buckets[conn_bucket(rec->sock)];
        while (*pp != NULL && *pp != rec)
            pp = &(*pp)->next;
        if (*pp == rec)
            *pp = rec->next;
    }
    free(rec);
}

static void on_accept(uv_stream_t *listener, int status)
{
    struct mock_server *srv = listener->data;
    if (status != 0)
        return;
    struct conn_record *rec = calloc(1, sizeof(*rec));
    if (rec == NULL)
        return;
    uv_tcp_init(listener->loop, &rec->tcp);
    if (uv_accept(listener, (uv_stream_t *)&rec->tcp) != 0) {
        uv_close((uv_handle_t *)&rec->tcp, on_conn_closed);
        return;
    }
    uv_tcp_nodelay(&rec->tcp, 1);
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&rec->tcp, on_conn_closed);
    rec->sock = sock;
    size_t b = conn_bucket(sock);
    rec->next = srv->conn_buckets[b];
    srv->conn_buckets[b] = rec;
    srv->total_connections++;
    h2o_accept(&srv->accept_ctx, sock);
}

static void attribute_connection(struct mock_server *srv, h2o_req_t *req, size_t key_index)
{
    if (req->conn->callbacks->get_socket == NULL)
        return;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    if (sock == NULL)
        return;
    for (struct conn_record *rec = srv->conn_buckets[conn_bucket(sock)]; rec != NULL; rec = rec->next) {
        if (rec->sock == sock) {
            if (!rec->attributed) {
                rec->attributed = 1;
                srv->key_slots[key_index].connections++;
            }
            return;
        }
    }
}

/* ---------- request scanning: prompt bytes and directives ---------- */

struct prompt_scan {
    uint64_t bytes;
    int found_directive;
    struct mock_overrides directive;
};

/* One outcome word of a directive or script step: "refuse" or "ok" (no change). */
static void parse_directive_word(struct mock_overrides *o, char *item)
{
    size_t n = strlen(item);
    while (n > 0 && item[n - 1] == ' ')
        item[--n] = '\0';
    if (strcmp(item, "refuse") == 0) {
        o->has_refuse = 1;
        o->refuse = 1;
    }
}

/* The numeric overrides by name: a directive's `name=N` (or its alias), and the first six
 * for all requests through POST /mock/config (there the name is tried before the alias). */
#define MOCK_FIELD(name, alias, f, has_f, config) \
    {name, alias, offsetof(struct mock_overrides, f), offsetof(struct mock_overrides, has_f), config}
static const struct mock_field {
    const char *name, *alias;
    size_t val, has;
    bool config;
} mock_fields[] = {
    MOCK_FIELD("chunks", NULL, chunks, has_chunks, true),
    MOCK_FIELD("chunk_delay_ms", "delay_ms", delay_ms, has_delay, true),
    MOCK_FIELD("first_byte_delay_ms", NULL, first_byte_delay_ms, has_first_byte_delay, true),
    MOCK_FIELD("status", NULL, status, has_status, true),
    MOCK_FIELD("cut_after", NULL, cut_after, has_cut_after, true),
    MOCK_FIELD("usage", NULL, usage, has_usage, true),
    MOCK_FIELD("thoughts", NULL, thoughts, has_thoughts, false),
    MOCK_FIELD("cached", NULL, cached, has_cached, false),
    MOCK_FIELD("quota", NULL, quota, has_quota, false),
    MOCK_FIELD("refuse", NULL, refuse, has_refuse, false),
};
#undef MOCK_FIELD

static void set_field(struct mock_overrides *o, const struct mock_field *f, long v)
{
    *(int *)((char *)o + f->has) = 1;
    *(long *)((char *)o + f->val) = v;
}

static void parse_directive(struct mock_overrides *o, const char *s, size_t n)
{
    /* s points just after "[[mock:"; the directive ends at "]]" (bounded to 256 bytes) */
    char text[257];
    size_t len = 0;
    while (len < n && len < sizeof(text) - 1 && !(s[len] == ']' && len + 1 < n && s[len + 1] == ']'))
        len++;
    memcpy(text, s, len);
    text[len] = '\0';
    char *save = NULL;
    for (char *item = strtok_r(text, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
        while (*item == ' ')
            item++;
        char *eq = strchr(item, '=');
        if (eq == NULL) {
            parse_directive_word(o, item);
            continue;
        }
        *eq = '\0';
        char *end = eq;
        while (end > item && end[-1] == ' ')
            *--end = '\0';
        if (strcmp(item, "tool") == 0) {
            /* a tool name: [A-Za-z0-9_-], at most 63 bytes; empty means "no tool call" */
            const char *v = eq + 1;
            while (*v == ' ')
                v++;
            size_t k = 0;
            while (k < MOCK_TOOL_LEN - 1 && (isalnum((unsigned char)v[k]) || v[k] == '_' || v[k] == '-'))
                k++;
            memcpy(o->tool, v, k);
            o->tool[k] = '\0';
            o->has_tool = 1;
            continue;
        }
        char *vend = NULL;
        long v = strtol(eq + 1, &vend, 10);
        if (vend == eq + 1)
            continue;
        for (size_t i = 0; i < sizeof(mock_fields) / sizeof(mock_fields[0]); i++) {
            const struct mock_field *f = &mock_fields[i];
            if (strcmp(item, f->name) == 0 || (f->alias != NULL && strcmp(item, f->alias) == 0)) {
                set_field(o, f, v);
                break;
            }
        }
    }
}

static void scan_string(struct prompt_scan *ps, const char *s)
{
    if (s == NULL)
        return;
    size_t n = strlen(s);
    ps->bytes += n;
    if (!ps->found_directive) {
        const char *d = memmem(s, n, "[[mock:", 7);
        if (d != NULL) {
            ps->found_directive = 1;
            parse_directive(&ps->directive, d + 7, n - (size_t)(d + 7 - s));
        }
    }
}

static yajl_val obj_get(yajl_val obj, const char *key)
{
    if (!YAJL_IS_OBJECT(obj))
        return NULL;
    for (size_t i = 0; i < obj->u.object.len; i++)
        if (strcmp(obj->u.object.keys[i], key) == 0)
            return obj->u.object.values[i];
    return NULL;
}

/* A content value: a string, an array of strings / parts / token ids, or an item object. */
static void scan_content(struct prompt_scan *ps, yajl_val v, int depth)
{
    if (v == NULL || depth > 6)
        return;
    if (YAJL_IS_STRING(v)) {
        scan_string(ps, YAJL_GET_STRING(v));
    } else if (YAJL_IS_NUMBER(v)) {
        ps->bytes += 4; /* a token id counts as one token */
    } else if (YAJL_IS_ARRAY(v)) {
        for (size_t i = 0; i < v->u.array.len; i++)
            scan_content(ps, v->u.array.values[i], depth + 1);
    } else if (YAJL_IS_OBJECT(v)) {
        yajl_val text = obj_get(v, "text");
        if (YAJL_IS_STRING(text))
            scan_string(ps, YAJL_GET_STRING(text));
        scan_content(ps, obj_get(v, "content"), depth + 1);
    }
}

static long clamp_long(long v, long lo, long hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static void apply_overrides(struct mock_plan *plan, long *chunks, const struct mock_overrides *o)
{
    if (o->has_chunks)
        *chunks = o->chunks;
    if (o->has_delay)
        plan->delay_ms = o->delay_ms;
    if (o->has_first_byte_delay)
        plan->first_byte_delay_ms = o->first_byte_delay_ms;
    if (o->has_status)
        plan->status = (int)o->status;
    if (o->has_cut_after)
        plan->cut_after = o->cut_after;
    if (o->has_usage)
        plan->usage = o->usage != 0;
    if (o->has_thoughts)
        plan->thoughts = o->thoughts < 0 ? 0 : (uint64_t)clamp_long(o->thoughts, 0, MOCK_MAX_CHUNKS);
    if (o->has_cached)
        plan->cached = o->cached < 0 ? 0 : (uint64_t)o->cached;
    if (o->has_quota)
        plan->quota = o->quota != 0;
    if (o->has_refuse)
        plan->refuse = o->refuse != 0;
    if (o->has_tool)
        memcpy(plan->tool, o->tool, sizeof(plan->tool));
}

static int get_bool(yajl_val root, const char *key)
{
    yajl_val v = obj_get(root, key);
    if (YAJL_IS_TRUE(v))
        return 1;
    if (YAJL_IS_FALSE(v))
        return 0;
    return -1;
}

static long long get_int(yajl_val root, const char *key)
{
    yajl_val v = obj_get(root, key);
    if (YAJL_IS_INTEGER(v))
        return YAJL_GET_INTEGER(v) < 0 ? 0 : YAJL_GET_INTEGER(v);
    return -1;
}

static double get_double(yajl_val root, const char *key)
{
    yajl_val v = obj_get(root, key);
    return YAJL_IS_NUMBER(v) ? YAJL_GET_DOUBLE(v) : NAN;
}

/* Gemini: the text of every part of a Content object ({"role", "parts": [{"text"}, ...]}). */
static void scan_gemini_content(struct prompt_scan *ps, yajl_val content)
{
    yajl_val parts = obj_get(content, "parts");
    if (!YAJL_IS_ARRAY(parts))
        return;
    for (size_t i = 0; i < parts->u.array.len; i++) {
        yajl_val text = obj_get(parts->u.array.values[i], "text");
        if (YAJL_IS_STRING(text))
            scan_string(ps, YAJL_GET_STRING(text));
    }
}

/* Fill the plan from the parsed request. Returns 0, or -EINVAL with a fixed message. */
static int plan_build(struct mock_server *srv, struct mock_plan *plan, yajl_val root,
                      const struct mock_overrides *step, const char **message)
{
    if (plan->api != API_GEMINI) { /* Gemini's model is in the path */
        yajl_val model = obj_get(root, "model");
        if (!YAJL_IS_STRING(model) || YAJL_GET_STRING(model)[0] == '\0') {
            *message = plan->api == API_ANTHROPIC ? "model: Field required" : "you must provide a model parameter";
            return -EINVAL;
        }
        snprintf(plan->model, sizeof(plan->model), "%s", YAJL_GET_STRING(model));
        plan->stream = plan->api != API_EMBEDDINGS && get_bool(root, "stream") == 1;
    }
    yajl_val so = obj_get(root, "stream_options");
    plan->include_usage = -1;
    if (YAJL_IS_OBJECT(so)) {
        plan->include_usage = get_bool(so, "include_usage");
    }
    plan->store = get_bool(root, "store");
    plan->max_tokens = -1;
    switch (plan->api) {
    case API_CHAT:
        plan->max_tokens = get_int(root, "max_completion_tokens");
        if (plan->max_tokens < 0)
            plan->max_tokens = get_int(root, "max_tokens");
        break;
    case API_COMPLETIONS:
    case API_ANTHROPIC:
        plan->max_tokens = get_int(root, "max_tokens");
        break;
    case API_RESPONSES:
        plan->max_tokens = get_int(root, "max_output_tokens");
        break;
    case API_GEMINI:
        plan->max_tokens = get_int(obj_get(root, "generationConfig"), "maxOutputTokens");
        break;
    default:
        break;
    }
    if (plan->api == API_ANTHROPIC && plan->max_tokens < 0) {
        *message = "max_tokens: Field required";
        return -EINVAL;
    }

    struct prompt_scan ps;
    memset(&ps, 0, sizeof(ps));
    if (plan->api == API_GEMINI) {
        scan_gemini_content(&ps, obj_get(root, "systemInstruction"));
        yajl_val contents = obj_get(root, "contents");
        if (YAJL_IS_ARRAY(contents))
            for (size_t i = 0; i < contents->u.array.len; i++)
                scan_gemini_content(&ps, contents->u.array.values[i]);
    } else {
        /* Anthropic: system (string or text blocks) and content (string or blocks, tool_result content) */
        scan_content(&ps, obj_get(root, "system"), 0);
        yajl_val messages = obj_get(root, "messages");
        if (YAJL_IS_ARRAY(messages))
            for (size_t i = 0; i < messages->u.array.len; i++)
                scan_content(&ps, obj_get(messages->u.array.values[i], "content"), 0);
        scan_content(&ps, obj_get(root, "prompt"), 0);
        scan_content(&ps, obj_get(root, "input"), 0);
        yajl_val instructions = obj_get(root, "instructions");
        if (YAJL_IS_STRING(instructions))
            scan_string(&ps, YAJL_GET_STRING(instructions));
    }
    plan->prompt_bytes = ps.bytes;
    plan->prompt_tokens = ps.bytes == 0 ? 1 : (ps.bytes + 3) / 4;

    long chunks = srv->chunks;
    plan->delay_ms = srv->chunk_delay_ms;
    plan->first_byte_delay_ms = 0;
    plan->status = 0;
    plan->cut_after = -1;
    plan->usage = 1;
    apply_overrides(plan, &chunks, &srv->global);
    if (step != NULL)
        apply_overrides(plan, &chunks, step);
    if (ps.found_directive)
        apply_overrides(plan, &chunks, &ps.directive);
    chunks = clamp_long(chunks, 0, MOCK_MAX_CHUNKS);
    plan->delay_ms = clamp_long(plan->delay_ms, 0, MOCK_MAX_DELAY_MS);
    plan->first_byte_delay_ms = clamp_long(plan->first_byte_delay_ms, 0, MOCK_MAX_DELAY_MS);
    if (plan->status == 200 || plan->status < 0)
        plan->status = 0;
    if (plan->status != 0 && (plan->status < 400 || plan->status > 599))
        plan->status = 500;
    if (plan->quota) /* the format's spend-limit error (see build_quota_error) */
        plan->status = plan->format == FMT_ANTHROPIC ? 400 : 429;
    if (plan->cut_after < 0)
        plan->cut_after = -1;
    if (plan->cached > plan->prompt_tokens)
        plan->cached = plan->prompt_tokens;
    if (plan->api != API_CHAT && plan->api != API_ANTHROPIC && plan->api != API_GEMINI)
        plan->tool[0] = '\0'; /* tool calls exist in the three chat formats only */
    if (plan->api == API_EMBEDDINGS)
        plan->thoughts = 0;
    plan->truncated = 0;
    if (plan->api == API_EMBEDDINGS) {
        chunks = 0;
    } else if (plan->tool[0] != '\0') {
        /* a tool call: one token for the call, one per MOCK_TOOL_PIECE bytes of arguments; never capped */
        size_t pieces = (strlen(MOCK_TOOL_ARGS) + MOCK_TOOL_PIECE - 1) / MOCK_TOOL_PIECE;
        chunks = 1 + (long)pieces;
    } else if (plan->max_tokens >= 0 && plan->max_tokens < chunks) {
        chunks = (long)plan->max_tokens;
        plan->truncated = 1;
    }
    plan->chunks = (unsigned)chunks;
    /* Gemini sends a function call whole, in one chunk */
    plan->units = plan->tool[0] != '\0' && plan->api == API_GEMINI ? 1 : plan->chunks;
    return 0;
}

/* ---------- answer builders ---------- */

/* Token i's text, JSON-escaped, without quotes. */
static void append_token_escaped(struct sbuf *b, const struct mock_server *srv, unsigned i)
{
    if (i == 1 && srv->reply_text != NULL)
        sb_json_escape(b, srv->reply_text, srv->reply_text_len);
    else
        sb_printf(b, " tok%u", i);
}

static void append_full_text(struct sbuf *b, const struct mock_server *srv, unsigned count)
{
    sb_add(b, "\"", 1);
    for (unsigned i = 1; i <= count; i++)
        append_token_escaped(b, srv, i);
    sb_add(b, "\"", 1);
}

/* OpenAI usage: completion tokens include the reasoning (thoughts) ones, prompt tokens the cached ones. */
static void append_chat_usage(struct sbuf *b, const struct mock_plan *plan)
{
    uint64_t p = plan->prompt_tokens, c = plan->chunks + plan->thoughts;
    sb_printf(b,
              "{\"prompt_tokens\":%" PRIu64 ",\"completion_tokens\":%" PRIu64 ",\"total_tokens\":%" PRIu64
              ",\"prompt_tokens_details\":{\"cached_tokens\":%" PRIu64
              "},\"completion_tokens_details\":{\"reasoning_tokens\":%" PRIu64 "}}",
              p, c, p + c, plan->cached, plan->thoughts);
}

static void append_responses_usage(struct sbuf *b, const struct mock_plan *plan)
{
    uint64_t p = plan->prompt_tokens, c = plan->chunks + plan->thoughts;
    sb_printf(b,
              "{\"input_tokens\":%" PRIu64 ",\"input_tokens_details\":{\"cached_tokens\":%" PRIu64
              "},\"output_tokens\":%" PRIu64 ",\"output_tokens_details\":{\"reasoning_tokens\":%" PRIu64
              "},\"total_tokens\":%" PRIu64 "}",
              p, plan->cached, c, plan->thoughts, p + c);
}

/* Anthropic usage: input_tokens excludes the cache reads (input + cache reads = P); output includes thoughts. */
static void append_anthropic_usage(struct sbuf *b, const struct mock_plan *plan, uint64_t output)
{
    sb_printf(b,
              "{\"input_tokens\":%" PRIu64 ",\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":%" PRIu64
              ",\"output_tokens\":%" PRIu64 "}",
              plan->prompt_tokens - plan->cached, plan->cached, output);
}

/* Gemini usageMetadata after `candidates` output tokens (cumulative); thoughts are counted apart. */
static void append_gemini_usage(struct sbuf *b, const struct mock_plan *plan, uint64_t candidates)
{
    sb_printf(b, "{\"promptTokenCount\":%" PRIu64 ",\"candidatesTokenCount\":%" PRIu64 ",\"totalTokenCount\":%" PRIu64,
              plan->prompt_tokens, candidates, plan->prompt_tokens + candidates + plan->thoughts);
    if (plan->cached > 0)
        sb_printf(b, ",\"cachedContentTokenCount\":%" PRIu64, plan->cached);
    if (plan->thoughts > 0)
        sb_printf(b, ",\"thoughtsTokenCount\":%" PRIu64, plan->thoughts);
    sb_adds(b, "}");
}

static const char *finish_reason(const struct mock_plan *plan)
{
    return plan->tool[0] ? "tool_calls" : plan->truncated ? "length" : "stop";
}

static const char *anthropic_stop_reason(const struct mock_plan *plan)
{
    return plan->tool[0] ? "tool_use" : plan->truncated ? "max_tokens" : "end_turn";
}

static const char *gemini_finish_reason(const struct mock_plan *plan)
{
    return plan->truncated ? "MAX_TOKENS" : "STOP";
}

/* The tool call's arguments as a JSON string value (OpenAI's `arguments`). */
static void append_tool_args_string(struct sbuf *b)
{
    sb_json_str(b, MOCK_TOOL_ARGS, strlen(MOCK_TOOL_ARGS));
}

/* The content of a non-stream Anthropic message or a Gemini candidate: text or the tool call. */
static void append_anthropic_content(struct sbuf *b, const struct mock_server *srv, const struct mock_plan *plan)
{
    if (plan->tool[0]) {
        sb_printf(b, "[{\"type\":\"tool_use\",\"id\":\"%s\",\"name\":\"%s\",\"input\":%s}]", plan->call_id, plan->tool,
                  MOCK_TOOL_ARGS);
    } else {
        sb_adds(b, "[{\"type\":\"text\",\"text\":");
        append_full_text(b, srv, plan->chunks);
        sb_adds(b, "}]");
    }
}

static void append_gemini_chunk_begin(struct sbuf *b)
{
    sb_adds(b, "{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[");
}

/* Closes a candidate opened by append_gemini_chunk_begin; usage_tokens < 0: no usageMetadata. */
static void append_gemini_chunk_end(struct sbuf *b, const struct mock_plan *plan, int final, long long usage_tokens)
{
    sb_adds(b, "]}");
    if (final)
        sb_printf(b, ",\"finishReason\":\"%s\"", gemini_finish_reason(plan));
    sb_adds(b, ",\"index\":0}]");
    if (plan->usage && usage_tokens >= 0) {
        sb_adds(b, ",\"usageMetadata\":");
        append_gemini_usage(b, plan, (uint64_t)usage_tokens);
    }
    sb_adds(b, ",\"modelVersion\":");
    sb_json_str(b, plan->model, strlen(plan->model));
    sb_printf(b, ",\"responseId\":\"%s\"}", plan->id);
}

static void append_output_item(struct sbuf *b, const struct mock_server *srv, const struct mock_plan *plan,
                               const char *status, int with_text)
{
    sb_printf(b, "{\"id\":\"%s\",\"type\":\"message\",\"status\":\"%s\",\"role\":\"assistant\",\"content\":[",
              plan->item_id, status);
    if (with_text) {
        sb_adds(b, "{\"type\":\"output_text\",\"annotations\":[],\"text\":");
        append_full_text(b, srv, plan->chunks);
        sb_adds(b, "}");
    }
    sb_adds(b, "]}");
}

/* The responses API `response` object; final = 0 gives the in-progress shape. */
static void append_response_object(struct sbuf *b, const struct mock_server *srv, const struct mock_plan *plan,
                                   int final)
{
    const char *status = !final ? "in_progress" : plan->truncated ? "incomplete" : "completed";
    sb_printf(b, "{\"id\":\"%s\",\"object\":\"response\",\"created_at\":%lld,\"status\":\"%s\",\"error\":null,",
              plan->id, plan->created, status);
    if (final && plan->truncated)
        sb_adds(b, "\"incomplete_details\":{\"reason\":\"max_output_tokens\"},");
    else
        sb_adds(b, "\"incomplete_details\":null,");
    sb_adds(b, "\"instructions\":null,");
    if (plan->max_tokens >= 0)
        sb_printf(b, "\"max_output_tokens\":%lld,", plan->max_tokens);
    else
        sb_adds(b, "\"max_output_tokens\":null,");
    sb_adds(b, "\"model\":");
    sb_json_str(b, plan->model, strlen(plan->model));
    sb_adds(b, ",\"output\":[");
    if (final)
        append_output_item(b, srv, plan, plan->truncated ? "incomplete" : "completed", 1);
    sb_printf(b,
              "],\"parallel_tool_calls\":true,\"previous_response_id\":null,\"store\":%s,\"temperature\":1.0,"
              "\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":1.0,"
              "\"truncation\":\"disabled\",\"metadata\":{}",
              plan->store == 0 ? "false" : "true");
    if (plan->usage) {
        sb_adds(b, ",\"usage\":");
        if (final)
            append_responses_usage(b, plan);
        else
            sb_adds(b, "null");
    }
    sb_adds(b, "}");
}

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void append_base64(struct sbuf *b, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        char o[4] = {b64chars[(v >> 18) & 63], b64chars[(v >> 12) & 63], i + 1 < n ? b64chars[(v >> 6) & 63] : '=',
                     i + 2 < n ? b64chars[v & 63] : '='};
        sb_add(b, o, 4);
    }
}

static uint64_t embed_seed(yajl_val v, int depth)
{
    uint64_t h = 14695981039346656037ull;
    if (YAJL_IS_STRING(v)) {
        const char *s = YAJL_GET_STRING(v);
        h = fnv1a(s, strlen(s), h);
    } else if (YAJL_IS_INTEGER(v)) {
        long long x = YAJL_GET_INTEGER(v);
        h = fnv1a(&x, sizeof(x), h);
    } else if (YAJL_IS_ARRAY(v) && depth < 2) {
        for (size_t i = 0; i < v->u.array.len; i++) {
            uint64_t e = embed_seed(v->u.array.values[i], depth + 1);
            h = fnv1a(&e, sizeof(e), h);
        }
    }
    return h;
}

static void append_embedding(struct sbuf *b, size_t index, uint64_t seed, int base64)
{
    float values[MOCK_EMBED_DIM];
    uint64_t x = seed;
    for (int j = 0; j < MOCK_EMBED_DIM; j++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        values[j] = (float)((double)((x >> 40) & 0xffffff) / 16777216.0 * 2.0 - 1.0);
        values[j] = roundf(values[j] * 1e6f) / 1e6f;
    }
    sb_printf(b, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":", index ? "," : "", index);
    if (base64) {
        unsigned char raw[sizeof(values)];
        memcpy(raw, values, sizeof(values)); /* little-endian float32, as OpenAI sends */
        sb_add(b, "\"", 1);
        append_base64(b, raw, sizeof(raw));
        sb_add(b, "\"", 1);
    } else {
        sb_add(b, "[", 1);
        for (int j = 0; j < MOCK_EMBED_DIM; j++)
            sb_printf(b, "%s%.6f", j ? "," : "", (double)values[j]);
        sb_add(b, "]", 1);
    }
    sb_add(b, "}", 1);
}

/* The complete non-stream answer for a successful plan. */
static void build_plain_answer(struct sbuf *b, const struct mock_server *srv, const struct mock_plan *plan,
                               yajl_val root)
{
    switch (plan->api) {
    case API_CHAT:
        sb_printf(b, "{\"id\":\"%s\",\"object\":\"chat.completion\",\"created\":%lld,\"model\":", plan->id,
                  plan->created);
        sb_json_str(b, plan->model, strlen(plan->model));
        sb_adds(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
        if (plan->tool[0]) {
            sb_printf(b, "null,\"tool_calls\":[{\"id\":\"%s\",\"type\":\"function\",\"function\":{\"name\":\"%s\","
                         "\"arguments\":",
                      plan->call_id, plan->tool);
            append_tool_args_string(b);
            sb_adds(b, "}}]");
        } else {
            append_full_text(b, srv, plan->chunks);
        }
        sb_printf(b, ",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"%s\"}]", finish_reason(plan));
        if (plan->usage) {
            sb_adds(b, ",\"usage\":");
            append_chat_usage(b, plan);
        }
        sb_adds(b, ",\"system_fingerprint\":null}");
        break;
    case API_COMPLETIONS:
        sb_printf(b, "{\"id\":\"%s\",\"object\":\"text_completion\",\"created\":%lld,\"model\":", plan->id,
                  plan->created);
        sb_json_str(b, plan->model, strlen(plan->model));
        sb_adds(b, ",\"choices\":[{\"text\":");
        append_full_text(b, srv, plan->chunks);
        sb_printf(b, ",\"index\":0,\"logprobs\":null,\"finish_reason\":\"%s\"}]", finish_reason(plan));
        if (plan->usage) {
            sb_adds(b, ",\"usage\":");
            append_chat_usage(b, plan);
        }
        sb_adds(b, "}");
        break;
    case API_RESPONSES:
        append_response_object(b, srv, plan, 1);
        break;
    case API_ANTHROPIC:
        sb_printf(b, "{\"id\":\"%s\",\"type\":\"message\",\"role\":\"assistant\",\"model\":", plan->id);
        sb_json_str(b, plan->model, strlen(plan->model));
        sb_adds(b, ",\"content\":");
        append_anthropic_content(b, srv, plan);
        sb_printf(b, ",\"stop_reason\":\"%s\",\"stop_sequence\":null", anthropic_stop_reason(plan));
        if (plan->usage) {
            sb_adds(b, ",\"usage\":");
            append_anthropic_usage(b, plan, plan->chunks + plan->thoughts);
        }
        sb_adds(b, "}");
        break;
    case API_GEMINI:
        append_gemini_chunk_begin(b);
        if (plan->tool[0]) {
            sb_printf(b, "{\"functionCall\":{\"name\":\"%s\",\"args\":%s}}", plan->tool, MOCK_TOOL_ARGS);
        } else {
            sb_adds(b, "{\"text\":");
            append_full_text(b, srv, plan->chunks);
            sb_adds(b, "}");
        }
        append_gemini_chunk_end(b, plan, 1, plan->chunks);
        break;
    case API_EMBEDDINGS: {
        yajl_val input = obj_get(root, "input");
        yajl_val fmt = obj_get(root, "encoding_format");
        const char *fmt_text = YAJL_IS_STRING(fmt) ? YAJL_GET_STRING(fmt) : NULL;
        int base64 = fmt_text != NULL && strcmp(fmt_text, "base64") == 0;
        sb_adds(b, "{\"object\":\"list\",\"data\":[");
        if (YAJL_IS_ARRAY(input) && input->u.array.len > 0 && !YAJL_IS_NUMBER(input->u.array.values[0])) {
            size_t n = input->u.array.len < MOCK_MAX_EMBED_INPUTS ? input->u.array.len : MOCK_MAX_EMBED_INPUTS;
            for (size_t i = 0; i < n; i++)
                append_embedding(b, i, embed_seed(input->u.array.values[i], 0), base64);
        } else {
            append_embedding(b, 0, embed_seed(input, 0), base64);
        }
        sb_adds(b, "],\"model\":");
        sb_json_str(b, plan->model, strlen(plan->model));
        if (plan->usage)
            sb_printf(b, ",\"usage\":{\"prompt_tokens\":%" PRIu64 ",\"total_tokens\":%" PRIu64 "}", plan->prompt_tokens,
                      plan->prompt_tokens);
        sb_adds(b, "}");
        break;
    }
    default:
        break;
    }
}

/* ---------- streams ---------- */

static unsigned stream_token_limit(const struct mock_stream *s)
{
    if (s->plan.cut_after >= 0 && (unsigned long)s->plan.cut_after < s->plan.units)
        return (unsigned)s->plan.cut_after;
    return s->plan.units;
}

/* Output tokens a stream unit counts: one, except a Gemini tool call sent whole (all of C). */
static unsigned stream_unit_tokens(const struct mock_stream *s)
{
    return s->plan.units == s->plan.chunks ? 1 : s->plan.chunks;
}

static void anthropic_event_begin(struct mock_stream *s, const char *type)
{
    sb_printf(&s->out, "event: %s\ndata: {\"type\":\"%s\"", type, type);
}

/* A Gemini stream element: "data: " for SSE, or "[" / "\n," between the elements of a JSON array. */
static void gemini_element_begin(struct mock_stream *s)
{
    if (s->plan.gemini_sse)
        sb_adds(&s->out, "data: ");
    else
        sb_adds(&s->out, s->seq == 0 ? "[" : "\n,");
    s->seq++;
}

static void gemini_element_end(struct mock_stream *s)
{
    if (s->plan.gemini_sse)
        sb_adds(&s->out, "\r\n\r\n");
}

/* Tool-call argument piece i (0-based) of MOCK_TOOL_PIECE bytes. */
static void append_tool_piece(struct sbuf *b, unsigned i)
{
    size_t len = strlen(MOCK_TOOL_ARGS), off = (size_t)i * MOCK_TOOL_PIECE;
    size_t n = off >= len ? 0 : len - off < MOCK_TOOL_PIECE ? len - off : MOCK_TOOL_PIECE;
    sb_json_str(b, MOCK_TOOL_ARGS + (off < len ? off : len), n);
}

static void stream_usage_null(struct mock_stream *s)
{
    if (s->plan.include_usage == 1 && s->plan.usage)
        sb_adds(&s->out, ",\"usage\":null");
}

static void responses_event_begin(struct mock_stream *s, const char *type)
{
    sb_printf(&s->out, "event: %s\ndata: {\"type\":\"%s\",\"sequence_number\":%u", type, type, s->seq++);
}

static void responses_item_ref(struct mock_stream *s)
{
    sb_printf(&s->out, ",\"item_id\":\"%s\",\"output_index\":0,\"content_index\":0", s->plan.item_id);
}

static void stream_append_head(struct mock_stream *s)
{
    struct sbuf *b = &s->out;
    switch (s->plan.api) {
    case API_CHAT:
        sb_adds(b, "data: ");
        sb_add(b, s->head.data, s->head.len);
        sb_printf(b,
                  "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":%s,\"refusal\":null},"
                  "\"logprobs\":null,\"finish_reason\":null}]",
                  s->plan.tool[0] ? "null" : "\"\"");
        stream_usage_null(s);
        sb_adds(b, "}\n\n");
        break;
    case API_ANTHROPIC:
        anthropic_event_begin(s, "message_start");
        sb_printf(b, ",\"message\":{\"id\":\"%s\",\"type\":\"message\",\"role\":\"assistant\",\"model\":", s->plan.id);
        sb_json_str(b, s->plan.model, strlen(s->plan.model));
        sb_adds(b, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null");
        if (s->plan.usage) {
            sb_adds(b, ",\"usage\":");
            append_anthropic_usage(b, &s->plan, s->plan.chunks + s->plan.thoughts > 0 ? 1 : 0);
        }
        sb_adds(b, "}}\n\n");
        anthropic_event_begin(s, "content_block_start");
        if (s->plan.tool[0])
            sb_printf(b,
                      ",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"%s\",\"name\":\"%s\","
                      "\"input\":{}}}\n\n",
                      s->plan.call_id, s->plan.tool);
        else
            sb_adds(b, ",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        anthropic_event_begin(s, "ping");
        sb_adds(b, "}\n\n");
        break;
    case API_RESPONSES:
        responses_event_begin(s, "response.created");
        sb_adds(b, ",\"response\":");
        append_response_object(b, s->srv, &s->plan, 0);
        sb_adds(b, "}\n\n");
        responses_event_begin(s, "response.in_progress");
        sb_adds(b, ",\"response\":");
        append_response_object(b, s->srv, &s->plan, 0);
        sb_adds(b, "}\n\n");
        responses_event_begin(s, "response.output_item.added");
        sb_adds(b, ",\"output_index\":0,\"item\":");
        append_output_item(b, s->srv, &s->plan, "in_progress", 0);
        sb_adds(b, "}\n\n");
        responses_event_begin(s, "response.content_part.added");
        responses_item_ref(s);
        sb_adds(b, ",\"part\":{\"type\":\"output_text\",\"annotations\":[],\"text\":\"\"}}\n\n");
        break;
    default: /* legacy completions stream has no head chunk */
        break;
    }
}

static void stream_append_token(struct mock_stream *s, unsigned i)
{
    struct sbuf *b = &s->out;
    switch (s->plan.api) {
    case API_CHAT:
        sb_adds(b, "data: ");
        sb_add(b, s->head.data, s->head.len);
        if (s->plan.tool[0] && i == 1) {
            sb_printf(b,
                      "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"%s\",\"type\":"
                      "\"function\",\"function\":{\"name\":\"%s\",\"arguments\":\"\"}}]}",
                      s->plan.call_id, s->plan.tool);
        } else if (s->plan.tool[0]) {
            sb_adds(b, "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
                       "{\"arguments\":");
            append_tool_piece(b, i - 2);
            sb_adds(b, "}}]}");
        } else {
            sb_adds(b, "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"");
            append_token_escaped(b, s->srv, i);
            sb_adds(b, "\"}");
        }
        sb_adds(b, ",\"logprobs\":null,\"finish_reason\":null}]");
        stream_usage_null(s);
        sb_adds(b, "}\n\n");
        break;
    case API_ANTHROPIC:
        anthropic_event_begin(s, "content_block_delta");
        if (s->plan.tool[0]) {
            sb_adds(b, ",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":");
            if (i == 1)
                sb_adds(b, "\"\"");
            else
                append_tool_piece(b, i - 2);
            sb_adds(b, "}}\n\n");
        } else {
            sb_adds(b, ",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"");
            append_token_escaped(b, s->srv, i);
            sb_adds(b, "\"}}\n\n");
        }
        break;
    case API_GEMINI:
        gemini_element_begin(s);
        append_gemini_chunk_begin(b);
        if (s->plan.tool[0]) {
            sb_printf(b, "{\"functionCall\":{\"name\":\"%s\",\"args\":%s}}", s->plan.tool, MOCK_TOOL_ARGS);
            append_gemini_chunk_end(b, &s->plan, 0, s->plan.chunks);
        } else {
            sb_adds(b, "{\"text\":\"");
            append_token_escaped(b, s->srv, i);
            sb_adds(b, "\"}");
            append_gemini_chunk_end(b, &s->plan, 0, i);
        }
        gemini_element_end(s);
        break;
    case API_COMPLETIONS:
        sb_adds(b, "data: ");
        sb_add(b, s->head.data, s->head.len);
        sb_adds(b, "\"choices\":[{\"text\":\"");
        append_token_escaped(b, s->srv, i);
        sb_adds(b, "\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]");
        stream_usage_null(s);
        sb_adds(b, "}\n\n");
        break;
    case API_RESPONSES:
        responses_event_begin(s, "response.output_text.delta");
        responses_item_ref(s);
        sb_adds(b, ",\"delta\":\"");
        append_token_escaped(b, s->srv, i);
        sb_adds(b, "\",\"logprobs\":[]}\n\n");
        break;
    default:
        break;
    }
}

static void stream_append_tail(struct mock_stream *s)
{
    struct sbuf *b = &s->out;
    const struct mock_plan *plan = &s->plan;
    switch (plan->api) {
    case API_CHAT:
    case API_COMPLETIONS:
        sb_adds(b, "data: ");
        sb_add(b, s->head.data, s->head.len);
        if (plan->api == API_CHAT)
            sb_printf(b, "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"%s\"}]",
                      finish_reason(plan));
        else
            sb_printf(b, "\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"%s\"}]",
                      finish_reason(plan));
        stream_usage_null(s);
        sb_adds(b, "}\n\n");
        if (plan->include_usage == 1 && plan->usage) {
            sb_adds(b, "data: ");
            sb_add(b, s->head.data, s->head.len);
            sb_adds(b, "\"choices\":[],\"usage\":");
            append_chat_usage(b, plan);
            sb_adds(b, "}\n\n");
        }
        sb_adds(b, "data: [DONE]\n\n");
        break;
    case API_ANTHROPIC:
        anthropic_event_begin(s, "content_block_stop");
        sb_adds(b, ",\"index\":0}\n\n");
        anthropic_event_begin(s, "message_delta");
        sb_printf(b, ",\"delta\":{\"stop_reason\":\"%s\",\"stop_sequence\":null}", anthropic_stop_reason(plan));
        if (plan->usage) /* cumulative, as the real API */
            sb_printf(b, ",\"usage\":{\"output_tokens\":%" PRIu64 "}", plan->chunks + plan->thoughts);
        sb_adds(b, "}\n\n");
        anthropic_event_begin(s, "message_stop");
        sb_adds(b, "}\n\n");
        break;
    case API_GEMINI:
        gemini_element_begin(s);
        append_gemini_chunk_begin(b);
        sb_adds(b, "{\"text\":\"\"}");
        append_gemini_chunk_end(b, plan, 1, plan->chunks); /* the authoritative usageMetadata */
        gemini_element_end(s);
        if (!plan->gemini_sse)
            sb_adds(b, "\n]");
        break;
    case API_RESPONSES: {
        const char *item_status = plan->truncated ? "incomplete" : "completed";
        responses_event_begin(s, "response.output_text.done");
        responses_item_ref(s);
        sb_adds(b, ",\"text\":");
        append_full_text(b, s->srv, plan->chunks);
        sb_adds(b, ",\"logprobs\":[]}\n\n");
        responses_event_begin(s, "response.content_part.done");
        responses_item_ref(s);
        sb_adds(b, ",\"part\":{\"type\":\"output_text\",\"annotations\":[],\"text\":");
        append_full_text(b, s->srv, plan->chunks);
        sb_adds(b, "}}\n\n");
        responses_event_begin(s, "response.output_item.done");
        sb_adds(b, ",\"output_index\":0,\"item\":");
        append_output_item(b, s->srv, plan, item_status, 1);
        sb_adds(b, "}\n\n");
        responses_event_begin(s, plan->truncated ? "response.incomplete" : "response.completed");
        sb_adds(b, ",\"response\":");
        append_response_object(b, s->srv, plan, 1);
        sb_adds(b, "}\n\n");
        break;
    }
    default:
        break;
    }
}

/* Build and hand to h2o the next piece of the stream: exactly one h2o_send per call. */
static void stream_step(struct mock_stream *s)
{
    h2o_send_state_t state = H2O_SEND_STATE_IN_PROGRESS;
    unsigned limit = stream_token_limit(s);
    s->out.len = 0; /* h2o is done with the previous bytes: we were proceeded */
    if (s->phase == PH_HEAD) {
        stream_append_head(s);
        s->phase = PH_TOKENS;
        if (s->plan.delay_ms > 0 && s->next_token <= limit && s->out.len > 0)
            goto send;
    }
    while (s->phase == PH_TOKENS) {
        if (s->next_token > limit) {
            s->phase = limit < s->plan.units ? PH_CUT : PH_TAIL;
            break;
        }
        stream_append_token(s, s->next_token++);
        stats_add(s->srv, s->plan.key_index, s->generation, 0, stream_unit_tokens(s), 0);
        if (s->plan.delay_ms > 0 || s->out.len >= MOCK_BATCH_BYTES)
            goto send;
    }
    if (s->phase == PH_TAIL) {
        stream_append_tail(s);
        state = H2O_SEND_STATE_FINAL;
        s->phase = PH_DONE;
    } else if (s->phase == PH_CUT && s->out.len == 0) {
        /* everything before the cut was delivered: now break the stream abruptly */
        stats_add(s->srv, s->plan.key_index, s->generation, 0, 0, 1);
        state = H2O_SEND_STATE_ERROR;
        s->phase = PH_DONE;
    }
send:;
    h2o_iovec_t buf = h2o_iovec_init(s->out.data, s->out.len);
    h2o_send(s->req, &buf, s->out.len ? 1 : 0, state);
}

static void on_stream_timer(uv_timer_t *timer);

static void on_stream_proceed(h2o_generator_t *generator, h2o_req_t *req)
{
    (void)req;
    struct mock_stream *s = container_of(generator, struct mock_stream, generator);
    if (s->phase == PH_DONE || s->req == NULL)
        return;
    if (s->phase == PH_TOKENS && s->plan.delay_ms > 0 && s->next_token <= stream_token_limit(s))
        uv_timer_start(&s->timer, on_stream_timer, (uint64_t)s->plan.delay_ms, 0);
    else
        stream_step(s);
}

static void on_stream_stop(h2o_generator_t *generator, h2o_req_t *req)
{
    (void)req;
    struct mock_stream *s = container_of(generator, struct mock_stream, generator);
    s->phase = PH_DONE;
    uv_timer_stop(&s->timer);
}

/* Response headers, then either the prebuilt body (plain/error answer) or the stream head. */
static void stream_start(struct mock_stream *s)
{
    h2o_req_t *req = s->req;
    struct mock_plan *plan = &s->plan;
    if (!plan->stream || plan->status != 0) {
        int status = plan->status ? plan->status : 200;
        req->res.status = status;
        req->res.reason = status_reason(status);
        add_header(req, H2O_TOKEN_CONTENT_TYPE, "application/json");
        if (status == 429)
            add_header(req, H2O_TOKEN_RETRY_AFTER, "1");
        req->res.content_length = s->out.len;
        if (plan->status)
            stats_add(s->srv, plan->key_index, s->generation, 0, 0, 1);
        else
            stats_add(s->srv, plan->key_index, s->generation, plan->prompt_tokens, plan->chunks + plan->thoughts, 0);
        s->phase = PH_DONE;
        h2o_start_response(req, &s->generator);
        h2o_iovec_t buf = h2o_iovec_init(s->out.data, s->out.len);
        h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
        return;
    }
    req->res.status = 200;
    req->res.reason = "OK";
    if (plan->api == API_GEMINI && !plan->gemini_sse)
        add_header(req, H2O_TOKEN_CONTENT_TYPE, "application/json; charset=UTF-8");
    else
        add_header(req, H2O_TOKEN_CONTENT_TYPE, "text/event-stream; charset=utf-8");
    add_header(req, H2O_TOKEN_CACHE_CONTROL, "no-cache");
    /* the prompt and the thoughts (which precede any answer) count when the headers go out */
    stats_add(s->srv, plan->key_index, s->generation, plan->prompt_tokens, plan->thoughts, 0);
    h2o_start_response(req, &s->generator);
    s->phase = PH_HEAD;
    stream_step(s);
}

static void on_stream_timer(uv_timer_t *timer)
{
    struct mock_stream *s = timer->data;
    if (s->req == NULL || s->phase == PH_DONE)
        return;
    if (s->phase == PH_START)
        stream_start(s);
    else
        stream_step(s);
}

static void on_stream_closed(uv_handle_t *handle)
{
    struct mock_stream *s = handle->data;
    sb_free(&s->out);
    sb_free(&s->head);
    free(s);
}

static void on_request_disposed(void *p)
{
    struct mock_stream *s = *(struct mock_stream **)p;
    s->req = NULL;
    s->phase = PH_DONE;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, on_stream_closed);
}

/* Take over a request whose answer is delayed or streamed. body: prebuilt plain answer. */
static int stream_create(struct mock_server *srv, h2o_req_t *req, const struct mock_plan *plan, const struct sbuf *body)
{
    struct mock_stream *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return send_error(srv, req, 500, "mock out of memory");
    s->generator.proceed = on_stream_proceed;
    s->generator.stop = on_stream_stop;
    s->srv = srv;
    s->req = req;
    s->plan = *plan;
    s->next_token = 1;
    s->generation = srv->stats_generation;
    s->phase = PH_START;
    uv_timer_init(srv->loop, &s->timer);
    s->timer.data = s;
    struct mock_stream **ref = h2o_mem_alloc_shared(&req->pool, sizeof(*ref), on_request_disposed);
    *ref = s;
    if (body != NULL && body->len > 0)
        sb_add(&s->out, body->data, body->len);
    if (plan->stream && plan->status == 0) {
        if (plan->api == API_CHAT)
            sb_printf(&s->head,
                      "{\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":", plan->id,
                      plan->created);
        else
            sb_printf(&s->head, "{\"id\":\"%s\",\"object\":\"text_completion\",\"created\":%lld,\"model\":", plan->id,
                      plan->created);
        sb_json_str(&s->head, plan->model, strlen(plan->model));
        sb_adds(&s->head, ",\"system_fingerprint\":null,");
    }
    if (plan->first_byte_delay_ms > 0)
        uv_timer_start(&s->timer, on_stream_timer, (uint64_t)plan->first_byte_delay_ms, 0);
    else
        stream_start(s);
    return 0;
}

/* ---------- /v1 endpoints ---------- */

static void new_ids(struct mock_server *srv, struct mock_plan *plan)
{
    uint64_t n = ++srv->id_counter;
    uint64_t mix = srv->id_base ^ (n * 0x9e3779b97f4a7c15ull);
    const char *prefix = plan->api == API_CHAT          ? "chatcmpl-"
                         : plan->api == API_COMPLETIONS ? "cmpl-"
                         : plan->api == API_ANTHROPIC   ? "msg_"
                         : plan->api == API_GEMINI      ? "gem"
                                                        : "resp_";
    snprintf(plan->id, sizeof(plan->id), "%smock%016" PRIx64 "%08" PRIx64, prefix, mix, n & 0xffffffffu);
    snprintf(plan->item_id, sizeof(plan->item_id), "msg_mock%016" PRIx64 "%08" PRIx64, mix, n & 0xffffffffu);
    snprintf(plan->call_id, sizeof(plan->call_id), "%smock%016" PRIx64 "%08" PRIx64,
             plan->api == API_ANTHROPIC ? "toolu_" : "call_", mix, n & 0xffffffffu);
    plan->created = (long long)time(NULL);
}

/* ---------- per-key fault scripts ---------- */

static struct key_script *script_find(struct mock_server *srv, const char *key, size_t len, int create)
{
    struct key_script *free_slot = NULL;
    for (size_t i = 0; i < MOCK_MAX_SCRIPTS; i++) {
        struct key_script *ks = &srv->scripts[i];
        if (!ks->used) {
            if (free_slot == NULL)
                free_slot = ks;
        } else if (ks->key_len == len && memcmp(ks->key, key, len) == 0) {
            return ks;
        }
    }
    if (!create || free_slot == NULL || len > MOCK_MAX_KEY_LEN)
        return NULL;
    memset(free_slot, 0, sizeof(*free_slot));
    free_slot->used = 1;
    free_slot->key_len = len;
    memcpy(free_slot->key, key, len);
    return free_slot;
}

/* The outcome the key's next request gets from its script; 0 when the key has none. */
static int script_next(struct mock_server *srv, const char *key, size_t len, struct mock_overrides *out)
{
    struct key_script *ks = script_find(srv, key, len, 0);
    if (ks == NULL)
        return 0;
    ks->consumed++;
    if (ks->next < ks->count) {
        *out = ks->steps[ks->next++];
        if (ks->loop && ks->next == ks->count)
            ks->next = 0;
    } else {
        *out = ks->then;
    }
    return 1;
}

/* One outcome text ("status=500", "refuse", "ok", "status=429,quota=1", ...); 0 or -EINVAL. */
static int script_step_parse(struct mock_overrides *o, yajl_val v)
{
    memset(o, 0, sizeof(*o));
    if (!YAJL_IS_STRING(v))
        return -EINVAL;
    const char *text = YAJL_GET_STRING(v);
    parse_directive(o, text, strlen(text));
    return 0;
}

/* POST /mock/script {"key": K, "script": ["status=500", "refuse", "ok"], "then": "ok" | "loop": true} */
static int parse_script(struct mock_server *srv, h2o_req_t *req)
{
    char errbuf[128];
    char *text = malloc(req->entity.len + 1);
    if (text == NULL)
        return -ENOMEM;
    if (req->entity.len)
        memcpy(text, req->entity.base, req->entity.len);
    text[req->entity.len] = '\0';
    yajl_val root = yajl_tree_parse(text, errbuf, sizeof(errbuf));
    free(text);
    int r = -EINVAL;
    yajl_val key = obj_get(root, "key"), script = obj_get(root, "script");
    if (!YAJL_IS_STRING(key) || !YAJL_IS_ARRAY(script) || script->u.array.len > MOCK_MAX_STEPS)
        goto out;
    const char *k = YAJL_GET_STRING(key);
    struct key_script *ks = script_find(srv, k, strlen(k), 1);
    if (ks == NULL)
        goto out;
    struct key_script parsed;
    memset(&parsed, 0, sizeof(parsed));
    for (size_t i = 0; i < script->u.array.len; i++)
        if (script_step_parse(&parsed.steps[i], script->u.array.values[i]) != 0)
            goto out;
    parsed.count = script->u.array.len;
    parsed.loop = get_bool(root, "loop") == 1 && parsed.count > 0;
    yajl_val then = obj_get(root, "then");
    if (then != NULL && script_step_parse(&parsed.then, then) != 0)
        goto out;
    parsed.used = 1;
    parsed.key_len = ks->key_len;
    memcpy(parsed.key, ks->key, sizeof(parsed.key));
    *ks = parsed;
    if (ks->count == 0 && then == NULL)
        ks->used = 0; /* an empty script removes the key's script */
    r = 0;
out:
    yajl_tree_free(root);
    return r;
}

static void append_scripts(struct mock_server *srv, struct sbuf *b)
{
    int first = 1;
    sb_add(b, "{", 1);
    for (size_t i = 0; i < MOCK_MAX_SCRIPTS; i++) {
        struct key_script *ks = &srv->scripts[i];
        if (!ks->used)
            continue;
        if (!first)
            sb_add(b, ",", 1);
        first = 0;
        sb_json_str(b, ks->key, ks->key_len);
        sb_printf(b, ":{\"length\":%zu,\"next\":%zu,\"loop\":%s,\"consumed\":%" PRIu64 "}", ks->count, ks->next,
                  ks->loop ? "true" : "false", ks->consumed);
    }
    sb_add(b, "}", 1);
}

/* Close the request's connection without an answer: the client sees a connect-level failure.
 * shutdown() leaves the descriptor to h2o, which then fails its writes, reads EOF and closes. */
static void refuse_connection(struct mock_server *srv, h2o_req_t *req)
{
    if (req->conn->callbacks->get_socket == NULL)
        return;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    if (sock == NULL)
        return;
    for (struct conn_record *rec = srv->conn_buckets[conn_bucket(sock)]; rec != NULL; rec = rec->next) {
        if (rec->sock == sock) {
            uv_os_fd_t fd;
            if (uv_fileno((uv_handle_t *)&rec->tcp, &fd) == 0)
                shutdown(fd, SHUT_RDWR);
            return;
        }
    }
}

/* ---------- request shapes for /mock/requests (names and types, never text) ---------- */

static void desc_add(char *buf, size_t *len, size_t cap, const char *s, size_t n)
{
    if (*len + n + 1 > cap)
        return; /* bounded: later items are dropped */
    memcpy(buf + *len, s, n);
    buf[*len + n] = '\0';
    *len += n + 1;
}

static void item_add(char *item, size_t *n, size_t cap, const char *s)
{
    size_t k = strlen(s);
    if (*n + k + 1 >= cap)
        return;
    memcpy(item + *n, s, k);
    *n += k;
    item[*n] = '\0';
}

/* The type of one content part: an OpenAI/Anthropic "type", or a Gemini part's key. */
static const char *part_type(yajl_val part, int gemini)
{
    if (YAJL_IS_STRING(part))
        return "text";
    if (!YAJL_IS_OBJECT(part))
        return "?";
    if (gemini) {
        for (size_t i = 0; i < part->u.object.len; i++)
        {
            const char *k = part->u.object.keys[i];
            if (strcmp(k, "thought") != 0 && strcmp(k, "thoughtSignature") != 0)
                return k;
        }
        return "?";
    }
    yajl_val type = obj_get(part, "type");
    return YAJL_IS_STRING(type) ? YAJL_GET_STRING(type) : "?";
}

/* "role:type,type" for one message / content / input item. */
static void describe_message(struct request_record *r, const char *role, yajl_val msg, yajl_val content, int gemini)
{
    char item[160];
    size_t n = 0;
    item[0] = '\0';
    item_add(item, &n, sizeof(item), role);
    item_add(item, &n, sizeof(item), ":");
    int count = 0;
    if (YAJL_IS_STRING(content)) {
        item_add(item, &n, sizeof(item), "text");
        count++;
    } else if (YAJL_IS_ARRAY(content)) {
        for (size_t i = 0; i < content->u.array.len; i++) {
            if (count++)
                item_add(item, &n, sizeof(item), ",");
            item_add(item, &n, sizeof(item), part_type(content->u.array.values[i], gemini));
        }
    }
    if (!gemini && YAJL_IS_ARRAY(obj_get(msg, "tool_calls"))) {
        if (count++)
            item_add(item, &n, sizeof(item), ",");
        item_add(item, &n, sizeof(item), "tool_calls");
    }
    desc_add(r->parts, &r->parts_len, sizeof(r->parts), item, n);
}

static void describe_tool_names(struct request_record *r, yajl_val tools, int gemini)
{
    if (!YAJL_IS_ARRAY(tools))
        return;
    for (size_t i = 0; i < tools->u.array.len; i++) {
        yajl_val t = tools->u.array.values[i];
        yajl_val decls = gemini ? obj_get(t, "functionDeclarations") : NULL;
        size_t count = YAJL_IS_ARRAY(decls) ? decls->u.array.len : 1;
        for (size_t j = 0; j < count; j++) {
            yajl_val d = YAJL_IS_ARRAY(decls) ? decls->u.array.values[j] : t;
            yajl_val name = obj_get(d, "name");
            if (!YAJL_IS_STRING(name))
                name = obj_get(obj_get(d, "function"), "name"); /* OpenAI chat */
            const char *text = YAJL_IS_STRING(name) ? YAJL_GET_STRING(name) : NULL;
            if (text != NULL)
                desc_add(r->tools, &r->tools_len, sizeof(r->tools), text, strlen(text));
        }
    }
}

static void describe_request(struct request_record *r, enum mock_api api, yajl_val root)
{
    for (size_t i = 0; YAJL_IS_OBJECT(root) && i < root->u.object.len; i++)
        desc_add(r->fields, &r->fields_len, sizeof(r->fields), root->u.object.keys[i],
                 strlen(root->u.object.keys[i]));
    int gemini = api == API_GEMINI;
    yajl_val config = gemini ? obj_get(root, "generationConfig") : root;
    r->temperature = get_double(config, "temperature");
    r->top_p = get_double(config, gemini ? "topP" : "top_p");
    describe_tool_names(r, obj_get(root, "tools"), gemini);
    if (gemini) {
        yajl_val sys = obj_get(root, "systemInstruction");
        if (sys != NULL)
            describe_message(r, "system", sys, obj_get(sys, "parts"), 1);
        yajl_val contents = obj_get(root, "contents");
        for (size_t i = 0; YAJL_IS_ARRAY(contents) && i < contents->u.array.len; i++) {
            yajl_val c = contents->u.array.values[i];
            yajl_val role = obj_get(c, "role");
            describe_message(r, YAJL_IS_STRING(role) ? YAJL_GET_STRING(role) : "", c, obj_get(c, "parts"), 1);
        }
        return;
    }
    yajl_val sys = obj_get(root, "system");
    if (api == API_ANTHROPIC && sys != NULL)
        describe_message(r, "system", NULL, sys, 0);
    yajl_val list = obj_get(root, api == API_RESPONSES ? "input" : "messages");
    if (api == API_RESPONSES && YAJL_IS_STRING(list))
        describe_message(r, "user", NULL, list, 0);
    for (size_t i = 0; YAJL_IS_ARRAY(list) && i < list->u.array.len; i++) {
        yajl_val m = list->u.array.values[i];
        yajl_val role = obj_get(m, "role");
        if (!YAJL_IS_STRING(role))
            role = obj_get(m, "type");
        describe_message(r, YAJL_IS_STRING(role) ? YAJL_GET_STRING(role) : "", m, obj_get(m, "content"), 0);
    }
}

static int handle_models(struct mock_server *srv, h2o_req_t *req)
{
    struct sbuf *b = &srv->scratch;
    b->len = 0;
    sb_adds(b, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < srv->model_count; i++) {
        sb_adds(b, i ? ",{\"id\":" : "{\"id\":");
        sb_json_str(b, srv->models[i], strlen(srv->models[i]));
        sb_adds(b, ",\"object\":\"model\",\"created\":1700000000,\"owned_by\":\"mock\"}");
    }
    sb_adds(b, "]}");
    return send_json(req, 200, b->data, b->len);
}

static int key_accepted(const struct mock_server *srv, const char *key, size_t len)
{
    if (len == 0)
        return 0;
    if (!srv->keys_given)
        return 1;
    for (size_t i = 0; i < srv->key_count; i++)
        if (strlen(srv->keys[i]) == len && memcmp(srv->keys[i], key, len) == 0)
            return 1;
    return 0;
}

/* The value of query parameter `name` (raw, not percent-decoded); 0 when absent. */
static int query_param(h2o_req_t *req, const char *name, h2o_iovec_t *out)
{
    if (req->query_at == SIZE_MAX || req->query_at >= req->path.len)
        return 0;
    const char *p = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    size_t nl = strlen(name);
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        if (amp == NULL)
            amp = end;
        size_t len = (size_t)(amp - p);
        if (len >= nl && memcmp(p, name, nl) == 0 && (len == nl || p[nl] == '=')) {
            *out = len == nl ? h2o_iovec_init(amp, 0) : h2o_iovec_init(p + nl + 1, len - nl - 1);
            return 1;
        }
        p = amp + 1;
    }
    return 0;
}

/* The upstream key as each format sends it; returns how it came (a static string). */
static const char *extract_key(h2o_req_t *req, enum mock_format fmt, const char **key, size_t *key_len)
{
    *key = "";
    *key_len = 0;
    if (fmt == FMT_ANTHROPIC || fmt == FMT_GEMINI) {
        const char *name = fmt == FMT_ANTHROPIC ? "x-api-key" : "x-goog-api-key";
        ssize_t hi = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);
        if (hi >= 0) {
            *key = req->headers.entries[hi].value.base;
            *key_len = req->headers.entries[hi].value.len;
            return name;
        }
        h2o_iovec_t v;
        if (fmt == FMT_GEMINI && query_param(req, "key", &v)) {
            *key = v.base;
            *key_len = v.len;
            return "query";
        }
        return "none";
    }
    ssize_t hi = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (hi >= 0) {
        h2o_iovec_t v = req->headers.entries[hi].value;
        if (v.len >= 7 && strncasecmp(v.base, "Bearer ", 7) == 0) {
            *key = v.base + 7;
            *key_len = v.len - 7;
            while (*key_len > 0 && **key == ' ') {
                (*key)++;
                (*key_len)--;
            }
            return "bearer";
        }
    }
    return "none";
}

static void record_auth(struct request_record *r, h2o_req_t *req, const char *auth)
{
    r->auth = auth;
    ssize_t hi = h2o_find_header_by_str(&req->headers, "anthropic-version", strlen("anthropic-version"), -1);
    if (hi >= 0) {
        h2o_iovec_t v = req->headers.entries[hi].value;
        size_t n = v.len < sizeof(r->anthropic_version) - 1 ? v.len : sizeof(r->anthropic_version) - 1;
        memcpy(r->anthropic_version, v.base, n);
        r->anthropic_version[n] = '\0';
    }
}

/* gemini_model: the {model} of a Gemini path; gemini_stream: :streamGenerateContent. */
static int handle_v1(struct mock_server *srv, h2o_req_t *req, enum mock_api api, h2o_iovec_t gemini_model,
                     int gemini_stream)
{
    enum mock_format fmt = api == API_ANTHROPIC ? FMT_ANTHROPIC : api == API_GEMINI ? FMT_GEMINI : FMT_OPENAI;
    const char *key;
    size_t key_len;
    const char *auth = extract_key(req, fmt, &key, &key_len);
    size_t ki = key_index_get(srv, key, key_len);
    attribute_connection(srv, req, ki);
    int billed = api != API_MODELS;
    if (billed)
        srv->key_slots[ki].requests++;
    int want_post = api != API_MODELS;
    if (!(want_post ? iov_is(req->method, "POST") : iov_is(req->method, "GET"))) {
        record_auth(record_request(srv, req, NULL, key, key_len, ki, 405), req, auth);
        if (billed)
            srv->key_slots[ki].errors++;
        return send_error_fmt(srv, req, fmt, 405, "Method not allowed");
    }
    if (!key_accepted(srv, key, key_len)) {
        record_auth(record_request(srv, req, NULL, key, key_len, ki, 401), req, auth);
        if (billed)
            srv->key_slots[ki].errors++;
        const char *message = NULL;
        if (key_len == 0 && fmt == FMT_ANTHROPIC)
            message = "x-api-key header is required";
        return send_error_fmt(srv, req, fmt, 401, message);
    }
    if (api == API_MODELS) {
        record_auth(record_request(srv, req, NULL, key, key_len, ki, 200), req, auth);
        return handle_models(srv, req);
    }

    /* the key's fault script: one outcome per request that passed auth */
    struct mock_overrides step;
    int has_step = script_next(srv, key, key_len, &step);
    if (has_step && step.has_refuse && step.refuse) {
        record_auth(record_request(srv, req, NULL, key, key_len, ki, 0), req, auth);
        srv->key_slots[ki].errors++;
        refuse_connection(srv, req);
        return send_error_fmt(srv, req, fmt, 503, "refused"); /* never delivered: the socket is shut */
    }

    /* yajl_tree needs a NUL-terminated copy of the body */
    char errbuf[128];
    char *text = malloc(req->entity.len + 1);
    if (text == NULL)
        return send_error_fmt(srv, req, fmt, 500, "mock out of memory");
    if (req->entity.len)
        memcpy(text, req->entity.base, req->entity.len);
    text[req->entity.len] = '\0';
    yajl_val root = req->entity.len ? yajl_tree_parse(text, errbuf, sizeof(errbuf)) : NULL;
    explicit_bzero(text, req->entity.len + 1);
    free(text);
    if (root == NULL || !YAJL_IS_OBJECT(root)) {
        if (root != NULL)
            yajl_tree_free(root);
        record_auth(record_request(srv, req, NULL, key, key_len, ki, 400), req, auth);
        srv->key_slots[ki].errors++;
        return send_error_fmt(srv, req, fmt, 400, "We could not parse the JSON body of your request.");
    }

    struct mock_plan plan;
    memset(&plan, 0, sizeof(plan));
    plan.api = api;
    plan.format = fmt;
    plan.key_index = ki;
    if (api == API_GEMINI) {
        size_t n = gemini_model.len < sizeof(plan.model) - 1 ? gemini_model.len : sizeof(plan.model) - 1;
        memcpy(plan.model, gemini_model.base, n);
        plan.model[n] = '\0';
        plan.stream = gemini_stream;
        h2o_iovec_t alt;
        plan.gemini_sse = query_param(req, "alt", &alt) && alt.len == 3 && memcmp(alt.base, "sse", 3) == 0;
    }
    const char *message = NULL;
    if (plan_build(srv, &plan, root, has_step ? &step : NULL, &message) != 0) {
        struct request_record *r = record_request(srv, req, &plan, key, key_len, ki, 400);
        record_auth(r, req, auth);
        describe_request(r, api, root);
        yajl_tree_free(root);
        srv->key_slots[ki].errors++;
        return send_error_fmt(srv, req, fmt, 400, message);
    }
    new_ids(srv, &plan);
    struct request_record *r =
        record_request(srv, req, &plan, key, key_len, ki, plan.refuse ? 0 : plan.status ? plan.status : 200);
    record_auth(r, req, auth);
    describe_request(r, api, root);
    if (plan.refuse) {
        yajl_tree_free(root);
        srv->key_slots[ki].errors++;
        refuse_connection(srv, req);
        return send_error_fmt(srv, req, fmt, 503, "refused");
    }

    struct sbuf *b = &srv->scratch;
    b->len = 0;
    if (plan.status != 0 && plan.quota)
        plan.status = build_quota_error(b, fmt);
    else if (plan.status != 0)
        build_error_fmt(b, fmt, plan.status, NULL);
    else if (!plan.stream)
        build_plain_answer(b, srv, &plan, root);
    yajl_tree_free(root);

    if (plan.stream || plan.first_byte_delay_ms > 0)
        return stream_create(srv, req, &plan, b);
    if (plan.status != 0) {
        srv->key_slots[ki].errors++;
        return send_json(req, plan.status, b->data, b->len);
    }
    srv->key_slots[ki].input_tokens += plan.prompt_tokens;
    srv->key_slots[ki].output_tokens += plan.chunks + plan.thoughts;
    return send_json(req, 200, b->data, b->len);
}

/* ---------- /mock endpoints ---------- */

static void append_stats(struct mock_server *srv, struct sbuf *b)
{
    uint64_t req_total = 0, in_total = 0, out_total = 0, err_total = 0;
    int first = 1;
    sb_adds(b, "{\"keys\":{");
    for (size_t i = 0; i <= MOCK_KEY_SLOTS; i++) {
        struct key_stats *ks = &srv->key_slots[i];
        if (!ks->used)
            continue;
        if (!first)
            sb_add(b, ",", 1);
        first = 0;
        sb_json_str(b, ks->key, ks->key_len);
        sb_printf(b,
                  ":{\"requests\":%" PRIu64 ",\"input_tokens\":%" PRIu64 ",\"output_tokens\":%" PRIu64
                  ",\"connections\":%" PRIu64 ",\"errors\":%" PRIu64 "}",
                  ks->requests, ks->input_tokens, ks->output_tokens, ks->connections, ks->errors);
        req_total += ks->requests;
        in_total += ks->input_tokens;
        out_total += ks->output_tokens;
        err_total += ks->errors;
    }
    sb_printf(b,
              "},\"totals\":{\"requests\":%" PRIu64 ",\"input_tokens\":%" PRIu64 ",\"output_tokens\":%" PRIu64
              ",\"connections\":%" PRIu64 ",\"errors\":%" PRIu64 "}}",
              req_total, in_total, out_total, srv->total_connections, err_total);
}

static void append_tristate(struct sbuf *b, int v)
{
    sb_adds(b, v < 0 ? "null" : v ? "true" : "false");
}

static void append_desc_list(struct sbuf *b, const char *name, const char *buf, size_t len)
{
    sb_printf(b, ",\"%s\":[", name);
    for (size_t off = 0; off < len;) {
        size_t n = strlen(buf + off);
        if (off)
            sb_add(b, ",", 1);
        sb_json_str(b, buf + off, n);
        off += n + 1;
    }
    sb_add(b, "]", 1);
}

static void append_double_or_null(struct sbuf *b, const char *name, double v)
{
    if (isnan(v))
        sb_printf(b, ",\"%s\":null", name);
    else
        sb_printf(b, ",\"%s\":%.17g", name, v);
}

/* GET /mock/requests[?key=K]: the last MOCK_RING requests, oldest first (only key K's). */
static void append_requests(struct mock_server *srv, h2o_req_t *req, struct sbuf *b)
{
    size_t want = SIZE_MAX;
    h2o_iovec_t kv;
    int filtered = query_param(req, "key", &kv);
    if (filtered) { /* look the key up without creating a stats entry */
        for (size_t i = 0; i <= MOCK_KEY_SLOTS && want == SIZE_MAX; i++) {
            const struct key_stats *ks = &srv->key_slots[i];
            if (ks->used && ks->key_len == kv.len && memcmp(ks->key, kv.base, kv.len) == 0)
                want = i;
        }
        if (want == SIZE_MAX)
            want = SIZE_MAX - 1; /* matches no record */
    }
    sb_add(b, "[", 1);
    size_t start = (srv->ring_next + MOCK_RING - srv->ring_count) % MOCK_RING;
    int first = 1;
    for (size_t k = 0; k < srv->ring_count; k++) {
        const struct request_record *r = &srv->ring[(start + k) % MOCK_RING];
        if (filtered && r->key_index != want)
            continue;
        sb_adds(b, first ? "{\"path\":" : ",{\"path\":");
        first = 0;
        sb_json_str(b, r->path, strlen(r->path));
        sb_adds(b, ",\"model\":");
        if (r->model[0])
            sb_json_str(b, r->model, strlen(r->model));
        else
            sb_adds(b, "null");
        sb_printf(b, ",\"stream\":%s,\"include_usage\":", r->stream ? "true" : "false");
        append_tristate(b, r->include_usage);
        sb_adds(b, ",\"store\":");
        append_tristate(b, r->store);
        if (r->max_tokens >= 0)
            sb_printf(b, ",\"max_tokens\":%lld", r->max_tokens);
        else
            sb_adds(b, ",\"max_tokens\":null");
        sb_adds(b, ",\"key_suffix\":");
        sb_json_str(b, r->key_suffix, strlen(r->key_suffix));
        sb_printf(b, ",\"status\":%d,\"method\":", r->status);
        sb_json_str(b, r->method, strlen(r->method));
        sb_printf(b, ",\"auth\":\"%s\",\"anthropic_version\":", r->auth ? r->auth : "none");
        if (r->anthropic_version[0])
            sb_json_str(b, r->anthropic_version, strlen(r->anthropic_version));
        else
            sb_adds(b, "null");
        sb_printf(b, ",\"prompt_bytes\":%" PRIu64, r->prompt_bytes);
        append_double_or_null(b, "temperature", r->temperature);
        append_double_or_null(b, "top_p", r->top_p);
        append_desc_list(b, "fields", r->fields, r->fields_len);
        append_desc_list(b, "parts", r->parts, r->parts_len);
        append_desc_list(b, "tools", r->tools, r->tools_len);
        sb_add(b, "}", 1);
    }
    sb_add(b, "]", 1);
}

static int parse_config(struct mock_server *srv, h2o_req_t *req)
{
    struct mock_overrides o;
    memset(&o, 0, sizeof(o));
    if (req->entity.len > 0) {
        char errbuf[128];
        char *text = malloc(req->entity.len + 1);
        if (text == NULL)
            return -ENOMEM;
        memcpy(text, req->entity.base, req->entity.len);
        text[req->entity.len] = '\0';
        yajl_val root = yajl_tree_parse(text, errbuf, sizeof(errbuf));
        free(text);
        if (root == NULL || !YAJL_IS_OBJECT(root)) {
            yajl_tree_free(root);
            return -EINVAL;
        }
        for (size_t i = 0; i < sizeof(mock_fields) / sizeof(mock_fields[0]); i++) {
            const struct mock_field *f = &mock_fields[i];
            if (!f->config)
                continue;
            yajl_val v = obj_get(root, f->name);
            if (v == NULL && f->alias != NULL)
                v = obj_get(root, f->alias);
            if (YAJL_IS_INTEGER(v))
                set_field(&o, f, (long)YAJL_GET_INTEGER(v));
            else if (YAJL_IS_TRUE(v) || YAJL_IS_FALSE(v))
                set_field(&o, f, YAJL_IS_TRUE(v));
        }
        yajl_tree_free(root);
    }
    srv->global = o;
    return 0;
}

static int handle_mock(struct mock_server *srv, h2o_req_t *req)
{
    struct sbuf *b = &srv->scratch;
    b->len = 0;
    h2o_iovec_t path = req->path_normalized;
    int is_get = iov_is(req->method, "GET"), is_post = iov_is(req->method, "POST");
    if (iov_is(path, "/mock/stats") && is_get) {
        append_stats(srv, b);
    } else if (iov_is(path, "/mock/requests") && is_get) {
        append_requests(srv, req, b);
    } else if (iov_is(path, "/mock/reset") && is_post) {
        stats_reset(srv);
        sb_adds(b, "{\"ok\":true}");
    } else if (iov_is(path, "/mock/script") && is_post) {
        if (parse_script(srv, req) != 0)
            return send_error(srv, req, 400, "expected {\"key\": K, \"script\": [outcome, ...], \"then\"|\"loop\"}");
        sb_adds(b, "{\"ok\":true}");
    } else if (iov_is(path, "/mock/scripts") && is_get) {
        append_scripts(srv, b);
    } else if (iov_is(path, "/mock/config") && is_post) {
        if (parse_config(srv, req) != 0)
            return send_error(srv, req, 400, "We could not parse the JSON body of your request.");
        sb_adds(b, "{\"ok\":true}");
    } else {
        return send_error(srv, req, 404, "Unknown mock endpoint");
    }
    return send_json(req, 200, b->data, b->len);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct mock_server *srv = ((struct mock_handler *)self)->server;
    h2o_iovec_t path = req->path_normalized;
    if (path.len >= 6 && memcmp(path.base, "/mock/", 6) == 0)
        return handle_mock(srv, req);
    enum mock_api api = API_NONE;
    static const char gemini_prefix[] = "/v1beta/models/";
    size_t gp = sizeof(gemini_prefix) - 1;
    if (path.len > gp && memcmp(path.base, gemini_prefix, gp) == 0) {
        const char *colon = memchr(path.base + gp, ':', path.len - gp);
        if (colon != NULL && colon > path.base + gp) {
            h2o_iovec_t model = h2o_iovec_init(path.base + gp, (size_t)(colon - path.base - gp));
            h2o_iovec_t verb = h2o_iovec_init(colon + 1, path.len - (size_t)(colon + 1 - path.base));
            if (iov_is(verb, "generateContent"))
                return handle_v1(srv, req, API_GEMINI, model, 0);
            if (iov_is(verb, "streamGenerateContent"))
                return handle_v1(srv, req, API_GEMINI, model, 1);
        }
        record_request(srv, req, NULL, "", 0, SIZE_MAX, 404);
        return send_error_fmt(srv, req, FMT_GEMINI, 404, "Method not found. (mock)");
    }
    if (iov_is(path, "/v1/messages"))
        api = API_ANTHROPIC;
    else if (iov_is(path, "/v1/chat/completions"))
        api = API_CHAT;
    else if (iov_is(path, "/v1/completions"))
        api = API_COMPLETIONS;
    else if (iov_is(path, "/v1/embeddings"))
        api = API_EMBEDDINGS;
    else if (iov_is(path, "/v1/responses"))
        api = API_RESPONSES;
    else if (iov_is(path, "/v1/models"))
        api = API_MODELS;
    if (api == API_NONE) {
        record_request(srv, req, NULL, "", 0, SIZE_MAX, 404);
        return send_error(srv, req, 404, "Invalid URL");
    }
    return handle_v1(srv, req, api, h2o_iovec_init(NULL, 0), 0);
}

/* ---------- startup ---------- */

static void on_signal(uv_signal_t *handle, int signum)
{
    (void)handle;
    (void)signum;
    fflush(stdout);
    fflush(stderr);
    _exit(0);
}

static size_t split_list(const char *arg, char **out, size_t max)
{
    size_t n = 0;
    const char *p = arg;
    while (*p && n < max) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len > 0)
            out[n++] = strndup(p, len);
        if (!comma)
            break;
        p = comma + 1;
    }
    return n;
}

static void usage(void)
{
    fputs("usage: mockprovider --listen HOST:PORT [--tls-cert F --tls-key F] [--keys K1,K2] [--chunks N]\n"
          "                    [--chunk-delay-ms MS] [--model-list m1,m2] [--reply-text TEXT] [--quiet]\n",
          stderr);
}

static int parse_listen(const char *arg, struct sockaddr_storage *sa, char *host, size_t host_size)
{
    const char *colon = strrchr(arg, ':');
    if (colon == NULL)
        return -EINVAL;
    const char *h = arg;
    size_t hlen = (size_t)(colon - arg);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= host_size)
        return -EINVAL;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535)
        return -EINVAL;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)sa) == 0)
        return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)sa) == 0)
        return 0;
    return -EINVAL;
}

int main(int argc, char **argv)
{
    static struct mock_server server; /* lives for the whole process */
    struct mock_server *srv = &server;
    const char *listen_arg = NULL, *cert = NULL, *keyfile = NULL, *keys_arg = NULL, *models_arg = NULL;
    srv->chunks = 8;
    srv->chunk_delay_ms = 0;

    static const struct option options[] = {{"listen", required_argument, NULL, 'l'},
                                            {"tls-cert", required_argument, NULL, 'c'},
                                            {"tls-key", required_argument, NULL, 'k'},
                                            {"keys", required_argument, NULL, 'K'},
                                            {"chunks", required_argument, NULL, 'n'},
                                            {"chunk-delay-ms", required_argument, NULL, 'd'},
                                            {"model-list", required_argument, NULL, 'm'},
                                            {"reply-text", required_argument, NULL, 'r'},
                                            {"quiet", no_argument, NULL, 'q'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'l':
            listen_arg = optarg;
            break;
        case 'c':
            cert = optarg;
            break;
        case 'k':
            keyfile = optarg;
            break;
        case 'K':
            keys_arg = optarg;
            break;
        case 'n':
            srv->chunks = clamp_long(strtol(optarg, NULL, 10), 0, MOCK_MAX_CHUNKS);
            break;
        case 'd':
            srv->chunk_delay_ms = clamp_long(strtol(optarg, NULL, 10), 0, MOCK_MAX_DELAY_MS);
            break;
        case 'm':
            models_arg = optarg;
            break;
        case 'r':
            srv->reply_text = optarg;
            srv->reply_text_len = strlen(optarg);
            break;
        case 'q':
            srv->quiet = 1;
            break;
        default:
            usage();
            return opt == 'h' ? 0 : 2;
        }
    }
    struct sockaddr_storage sa;
    char host[128];
    if (listen_arg == NULL || parse_listen(listen_arg, &sa, host, sizeof(host)) != 0 ||
        (cert == NULL) != (keyfile == NULL)) {
        usage();
        return 2;
    }
    if (keys_arg != NULL) {
        srv->keys_given = 1;
        srv->key_count = split_list(keys_arg, srv->keys, MOCK_MAX_KEYS);
    }
    srv->model_count =
        split_list(models_arg ? models_arg : "gpt-4o-mini,gpt-4o,text-embedding-3-small", srv->models, MOCK_MAX_MODELS);
    srv->key_slots = calloc(MOCK_KEY_SLOTS + 1, sizeof(struct key_stats));
    srv->scripts = calloc(MOCK_MAX_SCRIPTS, sizeof(struct key_script));
    if (srv->key_slots == NULL || srv->scripts == NULL)
        return 1;
    srv->id_base = fnv1a(&(uint64_t){(uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32)}, 8, 14695981039346656037ull);

    signal(SIGPIPE, SIG_IGN);
    uv_loop_t *loop = calloc(1, sizeof(*loop));
    if (loop == NULL || uv_loop_init(loop) != 0)
        return 1;
    loop->data = srv;
    srv->loop = loop;

    if (cert != NULL) {
        srv->ssl_ctx = SSL_CTX_new(TLS_server_method());
        SSL_CTX_set_min_proto_version(srv->ssl_ctx, TLS1_2_VERSION);
        SSL_CTX_set_options(srv->ssl_ctx, SSL_OP_NO_COMPRESSION);
        SSL_CTX_set_mode(srv->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
        if (SSL_CTX_use_certificate_chain_file(srv->ssl_ctx, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(srv->ssl_ctx, keyfile, SSL_FILETYPE_PEM) != 1) {
            fprintf(stderr, "mockprovider: cannot load the TLS certificate or key\n");
            return 1;
        }
        h2o_ssl_register_alpn_protocols(srv->ssl_ctx, h2o_alpn_protocols);
    }

    h2o_config_init(&srv->config);
    srv->config.max_request_entity_size = MOCK_MAX_BODY;
    h2o_hostconf_t *hostconf = h2o_config_register_host(&srv->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pathconf = h2o_config_register_path(hostconf, "/", 0);
    struct mock_handler *handler = (struct mock_handler *)h2o_create_handler(pathconf, sizeof(*handler));
    handler->super.on_req = on_req;
    handler->server = srv;
    h2o_context_init(&srv->ctx, loop, &srv->config);
    srv->accept_ctx.ctx = &srv->ctx;
    srv->accept_ctx.hosts = srv->config.hosts;
    srv->accept_ctx.ssl_ctx = srv->ssl_ctx;

    int r;
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    if ((r = uv_tcp_bind(&srv->listener, (struct sockaddr *)&sa, 0)) != 0 ||
        (r = uv_listen((uv_stream_t *)&srv->listener, 4096, on_accept)) != 0) {
        fprintf(stderr, "mockprovider: cannot listen on %s: %s\n", listen_arg, uv_strerror(r));
        return 1;
    }
    struct sockaddr_storage bound;
    int bound_len = sizeof(bound);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &bound_len);
    int port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                           : ntohs(((struct sockaddr_in *)&bound)->sin_port);

    uv_signal_init(loop, &srv->sigterm);
    uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    uv_signal_init(loop, &srv->sigint);
    uv_signal_start(&srv->sigint, on_signal, SIGINT);

    if (strchr(host, ':') != NULL)
        printf("mockprovider listening on [%s]:%d\n", host, port);
    else
        printf("mockprovider listening on %s:%d\n", host, port);
    fflush(stdout);
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
