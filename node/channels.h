/* channels: which upstream to try for a request, whether to try another one after a
 * failure, and a circuit breaker per channel. Pure code: no I/O, no clock (every function
 * that needs the time takes now_ms), no globals; randomness comes from a PRNG state the
 * caller owns (channels_rand). Nothing here sees request or response content except
 * channels_classify, which reads an upstream error body in place and keeps nothing of it.
 *
 * Terms. A model is served by routes (snapshot_route_t: provider, priority, weight, keys).
 * A CHANNEL is one (provider, upstream key) pair, named by the provider's name and the key's
 * index in the provider's key list (never the key itself). A route with k keys gives k
 * channels of the same priority that share the route's weight.
 *
 * ---- How the relay uses this module (the integration contract) ----
 *
 * Ownership and threads. Each worker thread owns one channels_table_t (breakers per worker:
 * no locks and no shared cache lines on the request path; the price is that each worker
 * learns on its own - a dead channel costs up to threshold failures and one probe per
 * cool-down on every worker - which is bounded and acceptable for a handful of workers).
 * Every function taking a table is called on its owner thread only. When a worker swaps in
 * a new config snapshot it calls channels_table_sync with the providers of that snapshot:
 * entries of removed providers (and of keys that changed) are dropped, so memory is bounded
 * by the channels of the current config. The admin/metrics view asks every worker (by
 * message) for channels_table_export, gets plain rows (no pointers) back and folds them with
 * channels_rows_merge.
 *
 * Per request:
 *   1. Build the candidates once from the model's routes (pointers into the snapshot the
 *      request holds): for route r, for key i: {provider, i, route = r, priority, weight}.
 *      Routes whose type the node cannot serve are left out.
 *   2. started = now; attempts = 0; tried = {}.
 *   3. c = channels_pick(table, cands, n, tried, n_tried, now, &rng, &ticket, &retry_after).
 *      c >= 0: attempts++, add c to tried, send to cands[c] with its first-byte timeout
 *      capped to channels_budget_left_ms. c == -EAGAIN (every untried channel is held by
 *      its breaker): when nothing was attempted yet answer 503 with Retry-After =
 *      ceil(retry_after / 1000) s (DESIGN's "upstream failed" row, overloaded_error /
 *      UNAVAILABLE); otherwise as in 5. c == -ENOENT (every channel tried): as in 5.
 *   4. When the attempt's outcome is known, classify it (channels_outcome_of_http with
 *      channels_classify for an HTTP status >= 400; the relay buffers such an error body,
 *      bounded, before anything reaches the client), then
 *        channels_record(table, provider, key_index, ticket, outcome, now);
 *        d = channels_should_retry(&policy, outcome, client_has_bytes, attempts, started, now);
 *      d == CHANNELS_RETRY: drop (wipe) the failed answer and go to 3.
 *   5. Otherwise the last outcome stands: an answer the upstream gave that is final
 *      (success, a client error, a quota error) is passed on (translated to the client's
 *      format); after retryable failures the client gets 504 upstream_timeout when the last
 *      failure was a timeout, else 502 upstream_error.
 *   Record exactly one verdict per ticket: at the upstream's response head (SUCCESS or an
 *   HTTP outcome), or at the connection failure / first-byte timeout, or CANCELLED when the
 *   attempt is abandoned without a verdict (client gone). After SUCCESS, a body that breaks
 *   (cut stream, idle timeout) may be recorded once more as BROKEN. A half-open probe
 *   holds its channel until its verdict; a probe that never reports frees the slot after
 *   probe_timeout_ms.
 *
 * ---- Choosing (channels_pick) ----
 * Among the candidates not yet tried and admitted by their breaker: the highest priority;
 * among those, a route chosen at random in proportion to its weight (each route counted
 * once, however many of its keys are admitted), then one of that route's admitted keys
 * uniformly. A breaker admits: closed - always; open - never, until its cool-down ends, then
 * it is half-open; half-open - exactly one request at a time (the probe; the ticket says so),
 * others skip the channel. A channel without an entry in the table (config newer or older
 * than the table) counts as closed.
 * When every channel is open: FAIL FAST (-EAGAIN and a 503), no last-resort bypass. A
 * bypass would turn each request into an extra probe of an upstream that just failed
 * threshold times, which is the load the breaker exists to shed; recovery is the half-open
 * probe's job, and retry_after tells the client when that will happen.
 *
 * ---- Retrying (channels_should_retry) ----
 * Retry with the next channel after: connect failure (refused, DNS, TLS, reset before the
 * head), no first byte within the timeout, HTTP 429 that is not a quota/spend error, any
 * 5xx (529 included), and a body that broke after a 2xx head - but never once a byte has
 * reached the client, never past policy.max_attempts attempts (the first one included), and
 * never when policy.budget_ms has passed since the first attempt started. Not retried: 2xx,
 * 4xx other than 429 (the request's own fault: another channel answers the same), quota and
 * spend errors (the operator must act; failing over would hide it until every key is
 * drained), CANCELLED.
 *
 * ---- Classifying an upstream error (channels_classify) ----
 * By status first, then by the error body of the provider's format (read with yajl; a body
 * that is not JSON is judged by status alone):
 *   402                                      QUOTA (any format)
 *   429  OpenAI error.code or error.type insufficient_quota, billing_hard_limit_reached,
 *        billing_not_active                  QUOTA   (rate_limit_exceeded etc.: RETRYABLE)
 *   429  Anthropic error.details.error_code enforced_spend_limit_reached, or a message about
 *        credit balance / spend or usage limit / billing        QUOTA (rate_limit_error: RETRYABLE)
 *   429  Gemini RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure detail, unless every
 *        violation's quotaId names a per-minute quota ("PerMinute": a rate limit, RETRYABLE)
 *                                            QUOTA   (no QuotaFailure detail: RETRYABLE)
 *   other 4xx  Anthropic billing_error type, or invalid_request_error / permission_error whose
 *        message is about credit balance, spend or usage limits or billing   QUOTA
 *              OpenAI code/type as for 429   QUOTA
 *              otherwise                     NOT_RETRYABLE
 *   5xx (500..599, 529 included)             RETRYABLE
 *   below 400                                NOT_RETRYABLE (not an error)
 * Messages are matched in place (case-insensitive substrings) and never copied; yajl's
 * buffers are wiped when freed.
 *
 * ---- The breaker (per channel) ----
 *   closed    -> open       threshold failures within window_ms (failures = CONNECT_FAILED,
 *                           TIMEOUT, HTTP_RETRYABLE, BROKEN; a SUCCESS clears the count;
 *                           client errors, quota errors and CANCELLED leave it alone)
 *   open      -> half_open  when the cool-down has passed (checked lazily at the next call)
 *   half_open -> closed     the probe's verdict is SUCCESS, HTTP_CLIENT or HTTP_QUOTA (the
 *                           upstream answered); the cool-down goes back to cooldown_ms
 *   half_open -> open       the probe failed; the cool-down doubles, up to cooldown_max_ms
 *   half_open (same)        the probe was CANCELLED or timed out: the next pick may probe
 * Verdicts of tickets issued before the breaker's last state change (requests that were in
 * flight when it opened or closed) are counted in the stats but change no state. Counters:
 * failures (every failure verdict), opens (closed/half_open -> open), probes (half-open
 * admissions); last_change_ms is the time of the last state change (0 = never). */
#ifndef LLMRELAY_NODE_CHANNELS_H
#define LLMRELAY_NODE_CHANNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CHANNELS_MAX_THRESHOLD 16 /* largest failure_threshold */
#define CHANNELS_MAX_PROVIDER 64  /* longest provider name (the admin API's limit) */

/* ---- randomness ---- */

/* Next value of the caller's PRNG (xorshift64*). A zero state is replaced by a fixed seed. */
uint64_t channels_rand(uint64_t *state);

/* ---- classification and outcomes ---- */

typedef enum channels_format {
    CHANNELS_FORMAT_OPENAI,
    CHANNELS_FORMAT_ANTHROPIC,
    CHANNELS_FORMAT_GEMINI,
} channels_format_t;

typedef enum channels_class {
    CHANNELS_NOT_RETRYABLE, /* the answer is final: pass it on */
    CHANNELS_RETRYABLE,     /* the channel failed: try another; a breaker failure */
    CHANNELS_QUOTA,         /* the upstream account's quota or spend limit: pass it on, no retry */
} channels_class_t;

/* Classifies an upstream answer of status with its error body (len bytes at body, borrowed,
 * may be NULL when len == 0) in the provider's format. See the table above. */
channels_class_t channels_classify(int status, channels_format_t format, const uint8_t *body, size_t len);

typedef enum channels_outcome {
    CHANNELS_OUTCOME_SUCCESS,        /* a response head with status < 400 */
    CHANNELS_OUTCOME_CONNECT_FAILED, /* no connection or no head: refused, DNS, TLS, reset */
    CHANNELS_OUTCOME_TIMEOUT,        /* no first byte within the first-byte timeout */
    CHANNELS_OUTCOME_HTTP_RETRYABLE, /* status >= 400 classified CHANNELS_RETRYABLE */
    CHANNELS_OUTCOME_HTTP_QUOTA,     /* status >= 400 classified CHANNELS_QUOTA */
    CHANNELS_OUTCOME_HTTP_CLIENT,    /* status >= 400 classified CHANNELS_NOT_RETRYABLE */
    CHANNELS_OUTCOME_BROKEN,         /* after a SUCCESS head: the body broke (cut, idle timeout) */
    CHANNELS_OUTCOME_CANCELLED,      /* abandoned with no verdict on the channel (client gone) */
} channels_outcome_t;

/* The outcome of an HTTP answer: SUCCESS below 400, else by cls. */
channels_outcome_t channels_outcome_of_http(int status, channels_class_t cls);
/* True for the outcomes the breaker counts as failures (and that may be retried). */
bool channels_outcome_is_failure(channels_outcome_t o);

/* ---- retry policy ---- */

typedef struct channels_retry_policy {
    unsigned max_attempts; /* attempts per request, the first included (e.g. 3); 0 acts as 1 */
    uint64_t budget_ms;    /* no new attempt once this long has passed since the first started (e.g. 30000) */
} channels_retry_policy_t;

typedef enum channels_retry {
    CHANNELS_RETRY,           /* pick the next channel */
    CHANNELS_STOP_FINAL,      /* the outcome is final (success, client or quota error, cancelled) */
    CHANNELS_STOP_COMMITTED,  /* bytes already reached the client */
    CHANNELS_STOP_ATTEMPTS,   /* max_attempts made */
    CHANNELS_STOP_BUDGET,     /* the time budget is spent */
} channels_retry_t;

/* Whether to try another channel after an attempt ended with outcome. attempts = attempts
 * made so far (>= 1), started_ms = when the first one started. Checks in this order: final
 * outcome, committed, attempts, budget. */
channels_retry_t channels_should_retry(const channels_retry_policy_t *p, channels_outcome_t outcome,
                                       bool client_has_bytes, unsigned attempts, uint64_t started_ms,
                                       uint64_t now_ms);
/* Time left of the budget (0 when spent): the cap for the next attempt's timeouts. */
uint64_t channels_budget_left_ms(const channels_retry_policy_t *p, uint64_t started_ms, uint64_t now_ms);

/* ---- breakers ---- */

typedef enum channels_state {
    CHANNELS_CLOSED,
    CHANNELS_OPEN,
    CHANNELS_HALF_OPEN,
} channels_state_t;

/* "closed", "open", "half_open" (for provider show and /metrics). */
const char *channels_state_name(channels_state_t s);

typedef struct channels_breaker_config {
    unsigned threshold;        /* failures within window_ms that open it, 1..CHANNELS_MAX_THRESHOLD (e.g. 5) */
    uint64_t window_ms;        /* e.g. 30000 */
    uint64_t cooldown_ms;      /* first open period, e.g. 30000 */
    uint64_t cooldown_max_ms;  /* cap of the doubling on consecutive reopens, e.g. 300000 */
    uint64_t probe_timeout_ms; /* a probe without a verdict for this long frees the slot, e.g. 120000 */
} channels_breaker_config_t;

/* The defaults above. */
void channels_breaker_config_default(channels_breaker_config_t *c);

typedef struct channels_table channels_table_t;

/* A new empty table (config copied; threshold clamped to 1..CHANNELS_MAX_THRESHOLD).
 * NULL on allocation failure. */
channels_table_t *channels_table_new(const channels_breaker_config_t *cfg);
void channels_table_free(channels_table_t *t);

/* One provider of the config: its name (borrowed for the call) and one tag per key.
 * key_tags identify the keys without being them (e.g. 64 bits of a hash of the key; the
 * table never exports them): a key index whose tag changed is a new channel with a fresh
 * breaker. key_tags NULL = all 0 (identity by index only). */
typedef struct channels_provider {
    const char *name;
    const uint64_t *key_tags;
    size_t n_keys;
} channels_provider_t;

/* Makes the table hold exactly the channels of these providers, keeping the state and
 * counters of channels that stay (same name, index and tag). 0; -EINVAL (a name longer than
 * CHANNELS_MAX_PROVIDER or empty, or a provider listed twice) or -ENOMEM, the table unchanged. */
int channels_table_sync(channels_table_t *t, const channels_provider_t *providers, size_t n);
/* Number of channels in the table. */
size_t channels_table_size(const channels_table_t *t);

/* One channel of a model's candidate list; the strings are borrowed. */
typedef struct channels_candidate {
    const char *provider;
    uint32_t key_index;
    uint32_t route;  /* the channels of one route (one provider's keys) have the same value */
    int priority;    /* higher first */
    uint32_t weight; /* the route's weight, the same on each of its channels; 0 acts as 1 */
} channels_candidate_t;

/* What a pick admitted; give it back to channels_record. */
typedef struct channels_ticket {
    uint32_t epoch; /* the breaker's state generation at the pick */
    bool probe;     /* this attempt is the half-open probe */
} channels_ticket_t;

/* The index of the candidate to try next (see "Choosing"), with its ticket; may move a
 * breaker from open to half-open and admit a probe. tried lists n_tried candidate indices
 * already attempted for this request (borrowed). rng is the caller's PRNG state.
 * -ENOENT: no untried candidate. -EAGAIN: every untried candidate is held by its breaker;
 * *retry_after_ms (when not NULL) is then the time until the first of them admits a probe
 * (at least 1). */
int channels_pick(channels_table_t *t, const channels_candidate_t *cands, size_t n, const size_t *tried,
                  size_t n_tried, uint64_t now_ms, uint64_t *rng, channels_ticket_t *ticket,
                  uint64_t *retry_after_ms);

/* The verdict of an attempt picked with ticket (see "The breaker"). A channel no longer in
 * the table is ignored. */
void channels_record(channels_table_t *t, const char *provider, uint32_t key_index, channels_ticket_t ticket,
                     channels_outcome_t outcome, uint64_t now_ms);

/* The state of one channel at now_ms (an open breaker past its cool-down reads half_open);
 * CHANNELS_CLOSED for a channel not in the table. */
channels_state_t channels_state(const channels_table_t *t, const char *provider, uint32_t key_index,
                                uint64_t now_ms);

/* ---- the admin / metrics view ---- */

typedef struct channels_row {
    char provider[CHANNELS_MAX_PROVIDER + 1];
    uint32_t key_index;
    channels_state_t state;  /* merged: the worst of the tables (open > half_open > closed) */
    uint64_t failures, opens, probes;
    uint64_t last_change_ms; /* merged: the latest */
    uint32_t not_closed;     /* how many tables (workers) have this breaker open or half-open */
} channels_row_t;

/* Fills rows[0 .. min(cap, size)) with the table's channels ordered by (provider, key_index)
 * as seen at now_ms; returns the table's size. Rows hold no pointers: they may be handed to
 * another thread. */
size_t channels_table_export(const channels_table_t *t, uint64_t now_ms, channels_row_t *rows, size_t cap);

/* Folds n rows (ordered as export orders them) into acc (n_acc rows, same order, room for
 * cap): same channel - counters summed, worst state, latest change; new channels inserted in
 * order while room lasts. Returns the new number of rows in acc. */
size_t channels_rows_merge(channels_row_t *acc, size_t n_acc, size_t cap, const channels_row_t *rows, size_t n);

#endif
