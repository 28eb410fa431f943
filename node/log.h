/* log.h — the node's diagnostic log (stderr) and its metadata log (stdout).
 *
 * Diagnostic lines are for operators: request ids, key ids, model names, statuses — never
 * request or response content, never a secret. The metadata log carries exactly one JSON
 * line per client request with the contract's metadata record fields and nothing else.
 * Each line goes out in one write(2), so lines from several worker threads never mix. */
#ifndef LLMRELAY_NODE_LOG_H
#define LLMRELAY_NODE_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

/* Sets the minimum level written (the process-wide setting, written once at start-up
 * before any thread starts). Returns 0 or -EINVAL for an unknown name. */
int log_set_level(const char *name);
void log_write(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool log_enabled(log_level_t level);
#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

/* The contract's metadata record. Strings are borrowed; each must be metadata only
 * (configured model names, key ids, request ids) — never client-supplied free text. */
typedef struct log_record {
    int64_t ts_ms; /* unix milliseconds at request start */
    const char *request_id;
    const char *node;
    const char *key_id;   /* "" when the key was not recognised */
    const char *model;    /* "" when the model was not recognised */
    const char *endpoint; /* "chat.completions", "completions", "embeddings", "responses", "models" */
    const char *provider; /* "" when no upstream was chosen */
    int status;
    int64_t input_tokens, cached_input_tokens, output_tokens, reasoning_tokens;
    double usd;
    int64_t latency_ms, ttfb_ms; /* ttfb_ms: -1 when no byte was sent */
    bool stream, estimated;
} log_record_t;

/* Formats r as one JSON line (with its '\n') into buf; returns its length, or 0 when cap
 * is too small. */
size_t log_record_format(const log_record_t *r, char *buf, size_t cap);
/* Writes one record at once. */
void log_record_write(const log_record_t *r);
/* Writes already formatted lines (whole lines only) in one write(2). */
void log_records_flush(const char *buf, size_t len);

#endif
