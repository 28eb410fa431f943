/* quota: per-key budgets and rate limits as pure state machines (no I/O, no clock, no
 * threads): reserve the worst case at admission, settle the exact usage at completion.
 *
 * Two machines, driven by events whose time (now_ms) the caller passes in:
 *
 *   owner  - holds a key's counters: spent (settled) usage, the rate windows, the
 *            reservations it admitted itself, and the allowance it has leased out. Runs on
 *            the node's main thread today, on the key's owner node in the cluster.
 *   lessee - admits requests locally from a leased allotment (no round trip), settles them
 *            locally and reports to the owner in batches. Runs on a worker thread today, on
 *            any node in the cluster.
 *
 * They talk by two plain messages, carried by the caller (queue + uv_async, or peer RPC):
 *   lessee -> owner  quota_report_t  settles (partial and final), allowance given back, and
 *                                    optionally an ask for more ("need more")
 *   owner -> lessee  quota_lease_t   the answer to an ask: allowance added, or a denial
 * and one hint owner -> lessee: "recall" (give back your free allowance), see
 * quota_owner_take_recalls. Messages may be delayed; a lost grant or return only parks
 * allowance until the lessee is declared gone, it never overdraws.
 *
 * Units. Tokens are billed tokens (input + output; cached input counts as input, reasoning
 * as output). Money is integer nano-USD (1e-9 USD) so that "spent + reserved <= budget" is
 * exact arithmetic, not floating point; quota_usd_to_nanos converts (rounds to nearest).
 *
 * Invariant (asserted by quota_owner_check, proved by the property tests): for each budget
 * dimension (tokens, nano-USD) that has a limit,
 *     spent + reserved_direct + sum over lessees of held <= budget
 * where a lessee's held = its free allowance + the worst case of its in-flight requests +
 * usage it settled but has not reported yet. It holds as long as every settle's actual
 * usage is <= the worst case reserved for it (the caller's bound guarantees that) and the
 * limits are not lowered below what is already committed (then nothing new is admitted
 * until the commitments drain). A final settle above its reservation, or for a request the
 * owner never reserved (e.g. a retry reaching a new owner), is still billed - billing is
 * the truth - and counted in the stats (overruns, unreserved_settles).
 *
 * Rate windows (rpm, tpm): sliding-window counter over fixed 60 s windows aligned on
 * now_ms / 60000: estimate = prev * (time left in the current window / 60 s) + cur,
 * rounded up. Constant memory; overshoot only at window edges. A request is admitted when
 * estimate + need <= limit (need = 1 request, worst.tokens tokens). tpm counts the worst
 * case at admission and is corrected to the actual tokens at the final settle (when the
 * reservation's window is still the current or previous one). Refusals carry
 * retry_after_ms: when, absent new traffic, enough of the window will have passed for this
 * request to fit.
 *
 * Grant policy (owner, on an ask from a lessee). Let free = budget - spent - reserved -
 * held (per budget dimension), n = the number of lessees competing (holding allowance or
 * having asked within one lease lifetime, the asker included), pending = the worst cases
 * of the asker's waiting requests, forecast = what the asker admitted during its last lease
 * lifetime. The grant is
 *     min(free, max(pending, min(pending + forecast, free / n)))
 * i.e. the waiting requests first (they are real and admitted at once), then prefetch of
 * the forecast only up to a fair share of what is left: when budget is plentiful each
 * lessee gets pending + forecast and steady state has no round trip; when many compete for
 * little, slices shrink to what is needed now, so allowance is not stranded in idle
 * slices (2 lessees and a budget for ~50 requests admit ~50, not 25 each). A budget grant
 * smaller than the largest waiting request is not made (it would only park a fragment).
 * Rate slices use the same formula with room = limit - estimate and share =
 * ceil(limit * lease_ttl / 60 s / n), and are counted in the window at grant time; unused
 * rate slices come back with the lease. When an ask cannot be covered the answer carries a
 * denial (budget exhausted, rate limited with retry_after, or reserved: budget held by
 * in-flight requests and other lessees - retry in 1 s) and the owner asks the other
 * lessees to give back free allowance (recalls). Lessees give back free allowance on their
 * lease's expiry, on a recall, after idle_return_ms without admissions, and with every ask
 * triggered by a request that did not fit (so fragments are pooled at the owner).
 *
 * Leases and time. A grant carries a ttl; the lessee's deadline is (time it sent the ask)
 * + ttl, which cannot be later than the owner's (time it granted) + ttl + clock_margin, so
 * the lessee always stops using a lease first. A live lessee gives back its free allowance
 * itself at its deadline; requests it admitted stay reserved until their final settle.
 *
 * A lessee that vanishes: a lessee holding anything reports at least every heartbeat_ms.
 * When the owner has not heard from a lessee for liveness_ms and its lease deadline has
 * passed (or the caller says it is gone, quota_owner_lessee_gone), the owner settles the
 * requests that lessee reported in flight at their last reported usage (a request's
 * admission is reported with usage 0, long streams report usage so far with final=false, a
 * final settle replaces partials), releases the rest of its allowance, and starts a new
 * epoch for that lessee id (a report from a restarted lessee, which has no epoch yet, has
 * the same effect at once): later messages of the old epoch give nothing back to the pool,
 * and their finals for requests already settled are ignored (counted as late_finals, and
 * reported in the answer so the node does not claim completion).
 *
 * Idempotency. Settles are idempotent by request id: a final removes the request's
 * reservation, and the owner keeps the ids (64-bit hashes) of the last settled_ring (4096)
 * finals per key, each for at most settled_max_age_ms (15 min). A duplicate final arriving
 * later than that and finding no reservation is billed again (over-billing, never
 * under-billing); callers retry settles within seconds, far inside the bound. Request ids
 * must be unique per request and generated by the relay, never taken from the client.
 *
 * Bounds: per key O(1) plus the settled ring (<= settled_ring entries), at most
 * QUOTA_MAX_LESSEES lessee records and max_inflight in-flight requests per lessee and for
 * the owner's own reservations (past it: refusal with reason BUSY, and no new grants).
 *
 * Ownership: quota_owner_new / quota_lessee_new return objects owned by the caller, freed
 * with quota_owner_free / quota_lessee_free. Every other pointer argument is borrowed for
 * the call; messages are plain structs with no pointers, copied freely. Not thread-safe:
 * one thread owns each object. */
#ifndef LLMRELAY_NODE_QUOTA_H
#define LLMRELAY_NODE_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QUOTA_WINDOW_MS 60000u
#define QUOTA_MAX_LESSEES 512u
#define QUOTA_MAX_INFLIGHT 4096u /* hard cap of quota_config_t.max_inflight */
#define QUOTA_REPORT_MAX 128u    /* settle entries per report */

typedef struct quota_config {
    uint32_t lease_ttl_ms;       /* lifetime of a grant, default 3000 */
    uint32_t clock_margin_ms;    /* owner keeps a lease this long past the lessee's deadline, 250 */
    uint32_t liveness_ms;        /* silent this long (and past its deadline) = vanished, 10000 */
    uint32_t heartbeat_ms;       /* a lessee holding anything reports at least this often, 1000 */
    uint32_t idle_return_ms;     /* lessee gives back free allowance after this long idle, 1000 */
    uint32_t max_inflight;       /* per lessee and for the owner's own reservations, 1024 */
    uint32_t settled_ring;       /* ids of recent finals kept per key, 4096 */
    uint32_t settled_max_age_ms; /* and for at most this long, 15 min */
} quota_config_t;

/* Fills the defaults above. */
void quota_config_default(quota_config_t *cfg);

typedef struct quota_limits {
    bool has_budget_tokens;
    int64_t budget_tokens;
    bool has_budget_usd;
    int64_t budget_nanousd;
    int64_t rpm; /* 0 = no limit */
    int64_t tpm; /* 0 = no limit */
} quota_limits_t;

typedef struct quota_usage {
    int64_t tokens;
    int64_t nanousd;
} quota_usage_t;

int64_t quota_usd_to_nanos(double usd);
double quota_nanos_to_usd(int64_t nanousd);
/* The 64-bit key under which a request id is tracked (never 0). */
uint64_t quota_request_key(const char *request_id);

typedef enum quota_verdict {
    QUOTA_ADMIT,
    QUOTA_WAIT,             /* lessee only: queue the request, send the report (it asks for more) */
    QUOTA_RATE_LIMITED,     /* 429 rate_limit_exceeded + Retry-After */
    QUOTA_BUDGET_EXHAUSTED, /* 429 insufficient_quota */
} quota_verdict_t;

typedef enum quota_reason {
    QUOTA_REASON_NONE,
    QUOTA_REASON_REQUESTS,  /* rpm */
    QUOTA_REASON_TOKENS,    /* tpm */
    QUOTA_REASON_TOO_LARGE, /* worst.tokens > tpm: never fits (retry_after = one window) */
    QUOTA_REASON_BUDGET,    /* spent + worst > budget */
    QUOTA_REASON_RESERVED,  /* budget held by in-flight requests / other lessees: retry soon */
    QUOTA_REASON_BUSY,      /* in-flight or lessee table full */
} quota_reason_t;

/* Header values: limits are -1 when there is no limit (then remaining is -1 too). reset_*
 * is the time until the window would be back to its initial state absent new traffic. */
typedef struct quota_decision {
    quota_verdict_t kind;
    quota_reason_t reason;
    uint64_t retry_after_ms;
    int64_t limit_requests, remaining_requests;
    int64_t limit_tokens, remaining_tokens;
    uint64_t reset_requests_ms, reset_tokens_ms;
} quota_decision_t;

/* One settle, lessee -> owner. An admission is reported as final=false with usage 0. */
typedef struct quota_settle_entry {
    uint64_t request_key;
    quota_usage_t worst; /* as reserved */
    quota_usage_t usage; /* so far (final=false) or exact (final=true) */
    uint64_t window_id;  /* owner's rate window the reservation was counted in */
    bool final;
    /* Accounting only, carried to the owner as given (quota_lessee_settle_split): the
     * input/output split of usage.tokens, for `key show`. */
    int64_t input_tokens, output_tokens;
} quota_settle_entry_t;

typedef struct quota_ask {
    bool has_ask;
    uint32_t seq;
    bool returned_all;     /* the report gave back all free allowance (ask triggered by a WAIT) */
    quota_usage_t pending; /* sum of worst cases of waiting requests */
    int64_t pending_requests;
    quota_usage_t max_worst; /* largest waiting request */
    quota_usage_t forecast;  /* budget wanted beyond pending: recent admissions minus what is held */
    int64_t forecast_requests;
    int64_t forecast_rate_tokens;
} quota_ask_t;

typedef struct quota_report {
    uint32_t epoch;
    uint32_t n_entries;
    quota_settle_entry_t entries[QUOTA_REPORT_MAX];
    quota_usage_t returned; /* budget allowance given back */
    int64_t returned_requests, returned_rate_tokens;
    uint64_t returned_window_id;
    quota_ask_t ask;
    bool more; /* more entries wait: take another report */
} quota_report_t;

/* Owner -> lessee: answer to an ask (or an epoch reset). */
typedef struct quota_lease {
    uint32_t epoch;
    bool reset; /* the owner declared the lessee gone: drop free allowance, adopt epoch */
    uint32_t ask_seq;
    uint32_t ttl_ms;
    quota_limits_t limits;
    quota_usage_t budget; /* allowance added */
    int64_t rate_requests, rate_tokens;
    uint64_t window_id;
    quota_verdict_t deny_kind; /* QUOTA_ADMIT: no denial */
    quota_reason_t deny_reason;
    uint64_t deny_retry_after_ms;
    quota_usage_t deny_threshold; /* requests at least this large get the denial */
    int64_t remaining_requests, remaining_tokens;
    uint64_t reset_requests_ms, reset_tokens_ms;
    uint32_t late_finals; /* finals of the answered report the owner had already settled */
} quota_lease_t;

typedef struct quota_owner_stat {
    quota_limits_t limits;
    quota_usage_t spent;
    int64_t spent_requests;
    quota_usage_t reserved; /* the owner's own in-flight reservations */
    quota_usage_t held;     /* leased out */
    uint32_t inflight, lessees, settled_ids;
    uint64_t dup_settles, unreserved_settles, late_finals, overruns, vanished_lessees;
} quota_owner_stat_t;

typedef struct quota_owner quota_owner_t;
typedef struct quota_lessee quota_lessee_t;

/* ---- owner ---- */

/* cfg NULL = defaults; spent_so_far NULL = nothing (else a checkpoint). NULL on ENOMEM. */
quota_owner_t *quota_owner_new(const quota_config_t *cfg, const quota_limits_t *limits,
                               const quota_usage_t *spent_so_far, int64_t spent_requests, uint64_t now_ms);
void quota_owner_free(quota_owner_t *o);
/* Limits changed in config. A budget lowered below what is committed admits nothing new
 * and recalls every lessee's free allowance. */
void quota_owner_set_limits(quota_owner_t *o, uint64_t now_ms, const quota_limits_t *limits);

/* Direct admission at the owner. ADMIT, RATE_LIMITED or BUDGET_EXHAUSTED. */
quota_decision_t quota_owner_reserve(quota_owner_t *o, uint64_t now_ms, const char *request_id, quota_usage_t worst);
/* Settle of a direct reservation. final=false records usage so far. Returns 0 when
 * applied, 1 when ignored as a duplicate, -ENOENT for a partial of an unknown request. */
int quota_owner_settle(quota_owner_t *o, uint64_t now_ms, const char *request_id, quota_usage_t actual, bool final);

/* Applies a lessee's report. When it carries an ask, or comes from a stale epoch, fills
 * *answer and returns 1 (send it to the lessee); else returns 0. */
int quota_owner_apply_report(quota_owner_t *o, uint64_t now_ms, uint32_t lessee_id, const quota_report_t *report,
                             quota_lease_t *answer);
/* Expires vanished lessees (their in-flight settled at last reported usage, allowance
 * returned), ages the settled ring, drops idle lessee records. Call about once a second. */
void quota_owner_tick(quota_owner_t *o, uint64_t now_ms);
/* Membership says the lessee is gone: same as its vanishing, now. */
void quota_owner_lessee_gone(quota_owner_t *o, uint64_t now_ms, uint32_t lessee_id);
/* Lessees the owner wants free allowance back from (then cleared). Returns how many ids
 * were written to ids (at most max). */
size_t quota_owner_take_recalls(quota_owner_t *o, uint32_t *ids, size_t max);

quota_usage_t quota_owner_spent(const quota_owner_t *o);
/* The request keys of the recent finals (oldest first), at most max; for handing a key over
 * to another owner, which marks them with quota_owner_mark_settled so retried finals are
 * recognised as duplicates there. */
size_t quota_owner_settled_keys(const quota_owner_t *o, uint64_t *out, size_t max);
void quota_owner_mark_settled(quota_owner_t *o, uint64_t now_ms, uint64_t request_key);
bool quota_owner_is_settled(const quota_owner_t *o, uint64_t request_key);
/* A new owner taking a key over: amount (what the previous owner had reserved and leased
 * out) is held back from new admissions and grants until until_ms (its lessees may still
 * spend leases it granted), less what finals of those old leases bill meanwhile. */
void quota_owner_hold(quota_owner_t *o, quota_usage_t amount, uint64_t until_ms);
/* Usage billed elsewhere (a handoff arriving after this owner started): added to spent. */
void quota_owner_add_spent(quota_owner_t *o, quota_usage_t usage, int64_t requests);
void quota_owner_stat(const quota_owner_t *o, quota_owner_stat_t *out);
/* Header values now, without admitting anything. */
quota_decision_t quota_owner_peek(quota_owner_t *o, uint64_t now_ms);
/* Recomputes every sum and checks the invariants; 0 or -EFAULT. For tests and asserts. */
int quota_owner_check(const quota_owner_t *o);

/* ---- lessee ---- */

quota_lessee_t *quota_lessee_new(const quota_config_t *cfg, uint32_t lessee_id);
void quota_lessee_free(quota_lessee_t *l);
uint32_t quota_lessee_id(const quota_lessee_t *l);

/* ADMIT (from the lease), WAIT (queue it; take_report will ask), or a refusal known from
 * the owner's last answer. Each WAIT adds the request to the pending demand of the next
 * ask; the caller calls reserve again for its queued requests after apply_grant. */
quota_decision_t quota_lessee_reserve(quota_lessee_t *l, uint64_t now_ms, const char *request_id, quota_usage_t worst);
/* Local settle: final releases worst - actual into the lease. 0; 1 for a second final not
 * yet reported; -ENOENT when unknown (or its final already went out in a report). */
int quota_lessee_settle(quota_lessee_t *l, uint64_t now_ms, const char *request_id, quota_usage_t actual, bool final);
/* The same, with the input/output split carried in the report's entry. */
int quota_lessee_settle_split(quota_lessee_t *l, uint64_t now_ms, const char *request_id, quota_usage_t actual,
                              bool final, int64_t input_tokens, int64_t output_tokens);
/* Next message to the owner: 1 if *out should be sent, 0 if there is nothing to say. Call
 * after a WAIT, and periodically (every ~100 ms) for batches, returns and heartbeats. */
int quota_lessee_take_report(quota_lessee_t *l, uint64_t now_ms, quota_report_t *out);
void quota_lessee_apply_grant(quota_lessee_t *l, uint64_t now_ms, const quota_lease_t *lease);
/* The owner asked for free allowance back: the next report gives it. */
void quota_lessee_recall(quota_lessee_t *l);
/* Demand of requests that got WAIT since the last ask (what the next ask will carry). */
void quota_lessee_pending(const quota_lessee_t *l, quota_usage_t *worst_sum, int64_t *requests);
/* Free allowance now (for tests and metrics). */
quota_usage_t quota_lessee_free_allowance(const quota_lessee_t *l);
uint32_t quota_lessee_inflight(const quota_lessee_t *l);

#endif
