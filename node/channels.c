/* channels: channel choice, retry policy and per-channel circuit breakers (see channels.h).
 *
 * How it works. The table keeps its entries in one array sorted by (provider, key index),
 * so export is a copy and merge a sorted merge, plus an open-addressing index (power-of-two
 * slots, FNV-1a of name and index) for the lookups of pick and record. sync rebuilds both
 * and carries the state of surviving channels over. A breaker remembers the times of its
 * last `threshold` failures in a ring: it opens when the oldest of them is within the
 * window. Open -> half-open is lazy (checked when the entry is next touched). The error
 * classifier is one SAX pass of yajl that tracks the path of object keys (arrays ignored)
 * and looks at a few string fields in place. */
#include "node/channels.h"
#include "node/wipe.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yajl/yajl_parse.h>

uint64_t channels_rand(uint64_t *state)
{
    if (*state == 0)
        *state = 0x9e3779b97f4a7c15ull;
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 2685821657736338717ull;
}

/* ---- classification ------------------------------------------------------------------- */

typedef enum {
    K_OTHER,
    K_ERROR,
    K_CODE,
    K_TYPE,
    K_MESSAGE,
    K_DETAILS,
    K_ERROR_CODE,
    K_STATUS,
    K_ATTYPE,
    K_VIOLATIONS,
    K_QUOTA_ID,
} ckey_t;

#define CLS_MAX_DEPTH 8

typedef struct cls_ctx {
    unsigned depth;                  /* open objects (arrays do not count) */
    ckey_t path[CLS_MAX_DEPTH];      /* key of each open object's current member */
    bool quota_code;                 /* OpenAI code/type or Anthropic details.error_code */
    bool billing_type;               /* Anthropic billing_error */
    bool billing_message;            /* a message about credit, spend/usage limits, billing */
    bool quota_failure;              /* Gemini google.rpc.QuotaFailure detail */
    unsigned per_minute, other_ids;  /* Gemini violations' quotaIds */
} cls_ctx_t;

static ckey_t ckey_of(const unsigned char *k, size_t n)
{
    static const struct {
        const char *name;
        ckey_t key;
    } names[] = {
        {"error", K_ERROR},         {"code", K_CODE},       {"type", K_TYPE},
        {"message", K_MESSAGE},     {"details", K_DETAILS}, {"error_code", K_ERROR_CODE},
        {"status", K_STATUS},       {"@type", K_ATTYPE},    {"violations", K_VIOLATIONS},
        {"quotaId", K_QUOTA_ID},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i].name) == n && memcmp(names[i].name, k, n) == 0)
            return names[i].key;
    return K_OTHER;
}

static bool has_sub(const unsigned char *s, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (strncasecmp((const char *)s + i, needle, m) == 0)
            return true;
    return false;
}

static bool eq(const unsigned char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

/* path == {a, b, ...} (K_OTHER terminates the pattern) */
static bool path_is(const cls_ctx_t *c, ckey_t a, ckey_t b, ckey_t d)
{
    ckey_t want[3] = {a, b, d};
    unsigned n = d != K_OTHER ? 3 : b != K_OTHER ? 2 : 1;
    if (c->depth != n)
        return false;
    for (unsigned i = 0; i < n; i++)
        if (c->path[i] != want[i])
            return false;
    return true;
}

static bool quota_code(const unsigned char *s, size_t n)
{
    return eq(s, n, "insufficient_quota") || eq(s, n, "billing_hard_limit_reached") ||
           eq(s, n, "billing_not_active") || eq(s, n, "enforced_spend_limit_reached");
}

static int cls_string(void *data, const unsigned char *s, size_t n)
{
    cls_ctx_t *c = data;
    if (path_is(c, K_ERROR, K_CODE, K_OTHER) || path_is(c, K_ERROR, K_TYPE, K_OTHER) ||
        path_is(c, K_ERROR, K_DETAILS, K_ERROR_CODE)) {
        if (quota_code(s, n))
            c->quota_code = true;
        if (eq(s, n, "billing_error"))
            c->billing_type = true;
    } else if (path_is(c, K_ERROR, K_MESSAGE, K_OTHER)) {
        if (has_sub(s, n, "credit balance") || has_sub(s, n, "spend limit") || has_sub(s, n, "usage limit") ||
            has_sub(s, n, "billing"))
            c->billing_message = true;
    } else if (path_is(c, K_ERROR, K_DETAILS, K_ATTYPE)) {
        const char *qf = "google.rpc.QuotaFailure";
        size_t m = strlen(qf);
        if (n >= m && memcmp(s + n - m, qf, m) == 0)
            c->quota_failure = true;
    } else if (c->depth == 4 && c->path[0] == K_ERROR && c->path[1] == K_DETAILS && c->path[2] == K_VIOLATIONS &&
               c->path[3] == K_QUOTA_ID) {
        if (has_sub(s, n, "PerMinute"))
            c->per_minute++;
        else
            c->other_ids++;
    }
    return 1;
}

static int cls_start_map(void *data)
{
    cls_ctx_t *c = data;
    if (c->depth >= CLS_MAX_DEPTH)
        return 0; /* deeper than any error shape: stop, judge by what was seen */
    c->path[c->depth++] = K_OTHER;
    return 1;
}

static int cls_map_key(void *data, const unsigned char *k, size_t n)
{
    cls_ctx_t *c = data;
    c->path[c->depth - 1] = ckey_of(k, n);
    return 1;
}

static int cls_end_map(void *data)
{
    cls_ctx_t *c = data;
    c->depth--;
    return 1;
}

static const yajl_callbacks cls_callbacks = {
    .yajl_string = cls_string,
    .yajl_start_map = cls_start_map,
    .yajl_map_key = cls_map_key,
    .yajl_end_map = cls_end_map,
};

channels_class_t channels_classify(int status, channels_format_t format, const uint8_t *body, size_t len)
{
    if (status < 400)
        return CHANNELS_NOT_RETRYABLE;
    if (status >= 500 && status <= 599)
        return CHANNELS_RETRYABLE;
    if (status == 402)
        return CHANNELS_QUOTA;
    cls_ctx_t c = {0};
    if (body != NULL && len > 0) {
        yajl_alloc_funcs af;
        wipe_yajl_alloc_funcs_init(&af);
        yajl_handle h = yajl_alloc(&cls_callbacks, &af, &c);
        if (h != NULL) {
            if (yajl_parse(h, body, len) == yajl_status_ok)
                (void)yajl_complete_parse(h);
            yajl_free(h);
        }
    }
    bool quota = false;
    switch (format) {
    case CHANNELS_FORMAT_OPENAI:
        quota = c.quota_code;
        break;
    case CHANNELS_FORMAT_ANTHROPIC:
        quota = c.quota_code || c.billing_type || c.billing_message;
        break;
    case CHANNELS_FORMAT_GEMINI:
        quota = status == 429 && c.quota_failure && !(c.per_minute > 0 && c.other_ids == 0);
        break;
    }
    if (quota)
        return CHANNELS_QUOTA;
    return status == 429 ? CHANNELS_RETRYABLE : CHANNELS_NOT_RETRYABLE;
}

channels_outcome_t channels_outcome_of_http(int status, channels_class_t cls)
{
    if (status < 400)
        return CHANNELS_OUTCOME_SUCCESS;
    switch (cls) {
    case CHANNELS_RETRYABLE:
        return CHANNELS_OUTCOME_HTTP_RETRYABLE;
    case CHANNELS_QUOTA:
        return CHANNELS_OUTCOME_HTTP_QUOTA;
    case CHANNELS_NOT_RETRYABLE:
        break;
    }
    return CHANNELS_OUTCOME_HTTP_CLIENT;
}

bool channels_outcome_is_failure(channels_outcome_t o)
{
    return o == CHANNELS_OUTCOME_CONNECT_FAILED || o == CHANNELS_OUTCOME_TIMEOUT ||
           o == CHANNELS_OUTCOME_HTTP_RETRYABLE || o == CHANNELS_OUTCOME_BROKEN;
}

/* ---- retry policy --------------------------------------------------------------------- */

channels_retry_t channels_should_retry(const channels_retry_policy_t *p, channels_outcome_t outcome,
                                       bool client_has_bytes, unsigned attempts, uint64_t started_ms,
                                       uint64_t now_ms)
{
    if (!channels_outcome_is_failure(outcome))
        return CHANNELS_STOP_FINAL;
    if (client_has_bytes)
        return CHANNELS_STOP_COMMITTED;
    unsigned max = p->max_attempts ? p->max_attempts : 1;
    if (attempts >= max)
        return CHANNELS_STOP_ATTEMPTS;
    if (channels_budget_left_ms(p, started_ms, now_ms) == 0)
        return CHANNELS_STOP_BUDGET;
    return CHANNELS_RETRY;
}

uint64_t channels_budget_left_ms(const channels_retry_policy_t *p, uint64_t started_ms, uint64_t now_ms)
{
    uint64_t spent = now_ms > started_ms ? now_ms - started_ms : 0;
    return spent >= p->budget_ms ? 0 : p->budget_ms - spent;
}

/* ---- breakers ------------------------------------------------------------------------- */

const char *channels_state_name(channels_state_t s)
{
    switch (s) {
    case CHANNELS_CLOSED:
        return "closed";
    case CHANNELS_OPEN:
        return "open";
    case CHANNELS_HALF_OPEN:
        return "half_open";
    }
    return "closed";
}

void channels_breaker_config_default(channels_breaker_config_t *c)
{
    c->threshold = 5;
    c->window_ms = 30000;
    c->cooldown_ms = 30000;
    c->cooldown_max_ms = 300000;
    c->probe_timeout_ms = 120000;
}

typedef struct entry {
    char *provider; /* owned */
    uint32_t key_index;
    uint64_t key_tag;
    channels_state_t state;
    uint32_t epoch;                               /* +1 on each state change */
    uint64_t fail_ms[CHANNELS_MAX_THRESHOLD];     /* ring of the last failures in this epoch */
    unsigned n_fail, fail_next;
    uint64_t open_until_ms;                       /* open: end of the cool-down */
    uint64_t cooldown_ms;                         /* the current cool-down */
    bool probing;
    uint64_t probe_ms;
    uint64_t failures, opens, probes, last_change_ms;
} entry_t;

struct channels_table {
    channels_breaker_config_t cfg;
    entry_t *entries; /* sorted by (provider, key_index) */
    size_t n;
    uint32_t *slots; /* index + 1 into entries; 0 = empty; n_slots a power of two */
    size_t n_slots;
};

channels_table_t *channels_table_new(const channels_breaker_config_t *cfg)
{
    channels_table_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->cfg = *cfg;
    if (t->cfg.threshold < 1)
        t->cfg.threshold = 1;
    if (t->cfg.threshold > CHANNELS_MAX_THRESHOLD)
        t->cfg.threshold = CHANNELS_MAX_THRESHOLD;
    if (t->cfg.cooldown_max_ms < t->cfg.cooldown_ms)
        t->cfg.cooldown_max_ms = t->cfg.cooldown_ms;
    return t;
}

static void entries_free(entry_t *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(e[i].provider);
    free(e);
}

void channels_table_free(channels_table_t *t)
{
    if (t == NULL)
        return;
    entries_free(t->entries, t->n);
    free(t->slots);
    free(t);
}

size_t channels_table_size(const channels_table_t *t)
{
    return t->n;
}

static uint64_t hash_of(const char *name, uint32_t key_index)
{
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    h = (h ^ key_index) * 1099511628211ull;
    return h ^ (h >> 29);
}

static entry_t *find(const channels_table_t *t, const char *name, uint32_t key_index)
{
    if (t->n_slots == 0)
        return NULL;
    size_t mask = t->n_slots - 1;
    for (size_t i = hash_of(name, key_index) & mask;; i = (i + 1) & mask) {
        uint32_t s = t->slots[i];
        if (s == 0)
            return NULL;
        entry_t *e = &t->entries[s - 1];
        if (e->key_index == key_index && strcmp(e->provider, name) == 0)
            return e;
    }
}

static int entry_cmp(const void *a, const void *b)
{
    const entry_t *x = a, *y = b;
    int c = strcmp(x->provider, y->provider);
    if (c != 0)
        return c;
    return x->key_index < y->key_index ? -1 : x->key_index > y->key_index;
}

int channels_table_sync(channels_table_t *t, const channels_provider_t *providers, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = providers[i].name ? strlen(providers[i].name) : 0;
        if (len == 0 || len > CHANNELS_MAX_PROVIDER)
            return -EINVAL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(providers[i].name, providers[j].name) == 0)
                return -EINVAL;
        if (providers[i].n_keys > UINT32_MAX)
            return -EINVAL;
        total += providers[i].n_keys;
    }
    if (total >= UINT32_MAX / 2)
        return -EINVAL;
    entry_t *es = calloc(total ? total : 1, sizeof(*es));
    size_t n_slots = 8;
    while (n_slots < total * 2)
        n_slots *= 2;
    uint32_t *slots = calloc(n_slots, sizeof(*slots));
    if (es == NULL || slots == NULL) {
        free(es);
        free(slots);
        return -ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < providers[i].n_keys; j++, k++) {
            entry_t *e = &es[k];
            uint64_t tag = providers[i].key_tags ? providers[i].key_tags[j] : 0;
            const entry_t *old = find(t, providers[i].name, (uint32_t)j);
            if (old != NULL && old->key_tag == tag)
                *e = *old;
            else
                memset(e, 0, sizeof(*e));
            e->provider = strdup(providers[i].name);
            if (e->provider == NULL) {
                entries_free(es, k);
                free(slots);
                return -ENOMEM;
            }
            e->key_index = (uint32_t)j;
            e->key_tag = tag;
            if (e->cooldown_ms == 0)
                e->cooldown_ms = t->cfg.cooldown_ms;
        }
    }
    qsort(es, total, sizeof(*es), entry_cmp);
    for (size_t i = 0; i < total; i++) {
        size_t mask = n_slots - 1, s = hash_of(es[i].provider, es[i].key_index) & mask;
        while (slots[s] != 0)
            s = (s + 1) & mask;
        slots[s] = (uint32_t)(i + 1);
    }
    entries_free(t->entries, t->n);
    free(t->slots);
    t->entries = es;
    t->n = total;
    t->slots = slots;
    t->n_slots = n_slots;
    return 0;
}

static void set_state(entry_t *e, channels_state_t s, uint64_t now_ms)
{
    e->state = s;
    e->epoch++;
    e->last_change_ms = now_ms;
    e->n_fail = 0;
    e->fail_next = 0;
    e->probing = false;
}

static void open_breaker(entry_t *e, uint64_t now_ms)
{
    set_state(e, CHANNELS_OPEN, now_ms);
    e->open_until_ms = now_ms + e->cooldown_ms;
    e->opens++;
}

/* Lazy transitions: the cool-down's end, a probe that never reported. */
static void advance(const channels_table_t *t, entry_t *e, uint64_t now_ms)
{
    if (e->state == CHANNELS_OPEN && now_ms >= e->open_until_ms)
        set_state(e, CHANNELS_HALF_OPEN, e->open_until_ms);
    if (e->state == CHANNELS_HALF_OPEN && e->probing && now_ms - e->probe_ms >= t->cfg.probe_timeout_ms)
        e->probing = false;
}

static channels_state_t state_at(const entry_t *e, uint64_t now_ms)
{
    if (e->state == CHANNELS_OPEN && now_ms >= e->open_until_ms)
        return CHANNELS_HALF_OPEN;
    return e->state;
}

channels_state_t channels_state(const channels_table_t *t, const char *provider, uint32_t key_index,
                                uint64_t now_ms)
{
    const entry_t *e = find(t, provider, key_index);
    return e ? state_at(e, now_ms) : CHANNELS_CLOSED;
}

static bool was_tried(const size_t *tried, size_t n_tried, size_t i)
{
    for (size_t j = 0; j < n_tried; j++)
        if (tried[j] == i)
            return true;
    return false;
}

/* After advance(): whether the breaker lets a request through now. */
static bool admitted(const channels_table_t *t, const channels_candidate_t *c)
{
    const entry_t *e = find(t, c->provider, c->key_index);
    return e == NULL || e->state == CHANNELS_CLOSED || (e->state == CHANNELS_HALF_OPEN && !e->probing);
}

int channels_pick(channels_table_t *t, const channels_candidate_t *cands, size_t n, const size_t *tried,
                  size_t n_tried, uint64_t now_ms, uint64_t *rng, channels_ticket_t *ticket,
                  uint64_t *retry_after_ms)
{
    assert(n <= (size_t)INT32_MAX);
    bool any_untried = false, any_ok = false;
    int best = 0;
    uint64_t wait = UINT64_MAX;
    /* Pass 1: which candidates the breakers admit, and the best priority among them. */
    for (size_t i = 0; i < n; i++) {
        if (was_tried(tried, n_tried, i))
            continue;
        any_untried = true;
        entry_t *e = find(t, cands[i].provider, cands[i].key_index);
        if (e != NULL) {
            advance(t, e, now_ms);
            if (e->state == CHANNELS_OPEN) {
                if (e->open_until_ms - now_ms < wait)
                    wait = e->open_until_ms - now_ms;
                continue;
            }
            if (e->state == CHANNELS_HALF_OPEN && e->probing) {
                uint64_t w = e->probe_ms + t->cfg.probe_timeout_ms - now_ms;
                if (w < wait)
                    wait = w;
                continue;
            }
        }
        if (!any_ok || cands[i].priority > best)
            best = cands[i].priority;
        any_ok = true;
    }
    if (!any_untried)
        return -ENOENT;
    if (!any_ok) {
        if (retry_after_ms != NULL)
            *retry_after_ms = wait == 0 || wait == UINT64_MAX ? 1 : wait;
        return -EAGAIN;
    }
    /* Pass 2: the weight of each admitted route at the best priority, counted once. */
#define ADMITTED(i)                                                                                                    \
    (!was_tried(tried, n_tried, (i)) && cands[(i)].priority == best && admitted(t, &cands[(i)]))
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!ADMITTED(i))
            continue;
        bool first = true;
        for (size_t j = 0; j < i && first; j++)
            if (cands[j].route == cands[i].route && ADMITTED(j))
                first = false;
        if (first)
            total += cands[i].weight ? cands[i].weight : 1;
    }
    uint64_t r = channels_rand(rng) % total;
    size_t chosen = n;
    uint32_t route = 0;
    for (size_t i = 0; i < n && chosen == n; i++) {
        if (!ADMITTED(i))
            continue;
        bool first = true;
        for (size_t j = 0; j < i && first; j++)
            if (cands[j].route == cands[i].route && ADMITTED(j))
                first = false;
        if (!first)
            continue;
        uint64_t w = cands[i].weight ? cands[i].weight : 1;
        if (r < w) {
            chosen = i;
            route = cands[i].route;
        } else {
            r -= w;
        }
    }
    assert(chosen < n);
    /* Pass 3: one of the route's admitted keys, uniformly. */
    size_t keys = 0;
    for (size_t i = chosen; i < n; i++)
        if (cands[i].route == route && ADMITTED(i))
            keys++;
    uint64_t kpick = keys > 1 ? channels_rand(rng) % keys : 0;
    for (size_t i = chosen; i < n; i++) {
        if (cands[i].route == route && ADMITTED(i)) {
            if (kpick == 0) {
                chosen = i;
                break;
            }
            kpick--;
        }
    }
#undef ADMITTED
    entry_t *e = find(t, cands[chosen].provider, cands[chosen].key_index);
    *ticket = (channels_ticket_t){0};
    if (e != NULL) {
        ticket->epoch = e->epoch;
        if (e->state == CHANNELS_HALF_OPEN) {
            e->probing = true;
            e->probe_ms = now_ms;
            e->probes++;
            ticket->probe = true;
        }
    }
    return (int)chosen;
}

void channels_record(channels_table_t *t, const char *provider, uint32_t key_index, channels_ticket_t ticket,
                     channels_outcome_t outcome, uint64_t now_ms)
{
    entry_t *e = find(t, provider, key_index);
    if (e == NULL)
        return;
    advance(t, e, now_ms);
    bool failure = channels_outcome_is_failure(outcome);
    if (failure)
        e->failures++;
    if (ticket.epoch != e->epoch)
        return; /* issued before the last state change */
    switch (e->state) {
    case CHANNELS_CLOSED:
        if (outcome == CHANNELS_OUTCOME_SUCCESS) {
            e->n_fail = 0;
            e->fail_next = 0;
        } else if (failure) {
            unsigned th = t->cfg.threshold;
            e->fail_ms[e->fail_next] = now_ms;
            e->fail_next = (e->fail_next + 1) % th;
            if (e->n_fail < th)
                e->n_fail++;
            /* with a full ring, fail_next is the oldest of the last th failures */
            if (e->n_fail == th && now_ms - e->fail_ms[e->fail_next] < t->cfg.window_ms) {
                e->cooldown_ms = t->cfg.cooldown_ms;
                open_breaker(e, now_ms);
            }
        }
        break;
    case CHANNELS_HALF_OPEN:
        if (!ticket.probe)
            break;
        if (outcome == CHANNELS_OUTCOME_CANCELLED) {
            e->probing = false;
        } else if (failure) {
            uint64_t next = e->cooldown_ms * 2;
            e->cooldown_ms = next > t->cfg.cooldown_max_ms || next < e->cooldown_ms ? t->cfg.cooldown_max_ms : next;
            open_breaker(e, now_ms);
        } else {
            e->cooldown_ms = t->cfg.cooldown_ms;
            set_state(e, CHANNELS_CLOSED, now_ms);
        }
        break;
    case CHANNELS_OPEN:
        break;
    }
}

/* ---- the admin / metrics view --------------------------------------------------------- */

size_t channels_table_export(const channels_table_t *t, uint64_t now_ms, channels_row_t *rows, size_t cap)
{
    for (size_t i = 0; i < t->n && i < cap; i++) {
        const entry_t *e = &t->entries[i];
        channels_row_t *r = &rows[i];
        memset(r, 0, sizeof(*r));
        strncpy(r->provider, e->provider, CHANNELS_MAX_PROVIDER);
        r->key_index = e->key_index;
        r->state = state_at(e, now_ms);
        r->failures = e->failures;
        r->opens = e->opens;
        r->probes = e->probes;
        r->last_change_ms = e->state == CHANNELS_OPEN && r->state == CHANNELS_HALF_OPEN ? e->open_until_ms
                                                                                       : e->last_change_ms;
        r->not_closed = r->state != CHANNELS_CLOSED;
    }
    return t->n;
}

static int row_cmp(const channels_row_t *a, const channels_row_t *b)
{
    int c = strcmp(a->provider, b->provider);
    if (c != 0)
        return c;
    return a->key_index < b->key_index ? -1 : a->key_index > b->key_index;
}

static int severity(channels_state_t s)
{
    return s == CHANNELS_OPEN ? 2 : s == CHANNELS_HALF_OPEN ? 1 : 0;
}

size_t channels_rows_merge(channels_row_t *acc, size_t n_acc, size_t cap, const channels_row_t *rows, size_t n)
{
    size_t i = 0;
    for (size_t j = 0; j < n; j++) {
        while (i < n_acc && row_cmp(&acc[i], &rows[j]) < 0)
            i++;
        if (i < n_acc && row_cmp(&acc[i], &rows[j]) == 0) {
            channels_row_t *a = &acc[i];
            if (severity(rows[j].state) > severity(a->state))
                a->state = rows[j].state;
            a->failures += rows[j].failures;
            a->opens += rows[j].opens;
            a->probes += rows[j].probes;
            if (rows[j].last_change_ms > a->last_change_ms)
                a->last_change_ms = rows[j].last_change_ms;
            a->not_closed += rows[j].not_closed;
            continue;
        }
        if (n_acc >= cap)
            continue;
        memmove(&acc[i + 1], &acc[i], (n_acc - i) * sizeof(*acc));
        acc[i] = rows[j];
        n_acc++;
    }
    return n_acc;
}
