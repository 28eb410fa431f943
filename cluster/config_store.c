/* config_store: the shared config (providers, API keys, admin tokens) as a typed,
 * always-available view over etcd.
 *
 * How it works:
 * - Three tables (providers, keys, tokens), each a sorted array of (id, unpacked protobuf
 *   message), id being the last component of the etcd key. The Llmrelay__Snapshot handed
 *   to users is a view: its repeated fields point into the tables (rebuilt when dirty).
 * - Load: range <prefix>config/ page by page (PAGE_LIMIT keys per page, all pages at the
 *   revision of the first) into fresh tables, swap them in, then watch from revision + 1.
 *   A failed load is retried with backoff; while it fails the last view stays (fail
 *   static).
 * - Watch events are applied to the tables in order. The etcd client re-establishes a
 *   broken watch from the last revision + 1 by itself, so changes made during an outage
 *   arrive when etcd is back; if that revision was compacted, the store reloads fully.
 * - Changes are announced through a zero timer (bursts coalesce to one callback per loop
 *   iteration) and saved to the snapshot file at most once per SAVE_INTERVAL_MS (tmp +
 *   fsync + rename, mode 0600).
 * - Until the first load from etcd succeeds, the view is the snapshot file's content.
 * - Secrets at rest: provider records are opened as they enter a table or the file view
 *   (provider_open: each sealed api_keys[i] replaced in place by its plaintext), and a
 *   sealed copy is made for every write out (put_provider, snapshot save); the tables never
 *   hold ciphertext and no plaintext leaves memory. Provider messages are wiped before
 *   they are freed (msg_free). AAD "provider:<record id>:api_key:<index>": the record id
 *   is the etcd key's last component (put_provider writes providers/<name>), the name in
 *   the snapshot file.
 */
#include "cluster/config_store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE_LIMIT 1000
#define SAVE_INTERVAL_MS 200
#define RETRY_MIN_MS 200
#define RETRY_MAX_MS 5000
#define MAX_SNAPSHOT_FILE (512u << 20)
#define LOG_LINE_MAX 512
#define LOG_NAME_MAX 64
#define LEGACY_WARNED_MAX 4096 /* names remembered for the once-per-provider warning */

enum table_kind { T_PROVIDERS, T_KEYS, T_TOKENS, T_PRICES, T_COUNT };

static const char *const table_dirs[T_COUNT] = {"config/providers/", "config/keys/", "config/tokens/",
                                                "config/prices/"};

struct rec {
    char *id;
    ProtobufCMessage *msg;
};

struct table {
    struct rec *recs;
    size_t n, cap;
};

struct write_ctx {
    config_store_t *s;
    config_store_done_cb cb;
    void *data;
    bool is_delete;
    struct write_ctx *prev, *next;
};

struct config_store {
    uv_loop_t *loop;
    etcd_client_t *etcd;
    char *prefix;
    size_t prefix_len;
    char *snapshot_path;
    config_store_update_cb cb;
    void *data;

    struct table tables[T_COUNT];
    int64_t revision;
    bool loaded;        /* from etcd at least once */
    bool watch_healthy; /* watch created and not broken since */
    Llmrelay__Snapshot *file_snap;

    /* load in progress */
    struct table staging[T_COUNT];
    bool loading;
    int64_t load_rev;
    unsigned load_failures;

    etcd_watch_t *watch;

    /* view */
    Llmrelay__Snapshot view;
    void **view_arrays[T_COUNT];
    bool view_dirty;

    uv_timer_t notify_timer, save_timer, retry_timer;
    int handles_open;
    bool save_pending;
    uint64_t last_save_ms;
    struct write_ctx *writes;

    secrets_key_t key; /* key.loaded false: no secrets key, plaintext at rest */
    config_store_log_cb log_cb;
    void *log_data;
    char **legacy_warned; /* providers already logged as holding plaintext keys */
    size_t n_legacy_warned;
};

static const ProtobufCMessageDescriptor *table_desc(enum table_kind k)
{
    switch (k) {
    case T_PROVIDERS:
        return &llmrelay__provider__descriptor;
    case T_KEYS:
        return &llmrelay__api_key__descriptor;
    case T_TOKENS:
        return &llmrelay__admin_token__descriptor;
    default:
        return &llmrelay__price__descriptor;
    }
}

/* --- logging ------------------------------------------------------------------------ */
static void slog(const config_store_t *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void slog(const config_store_t *s, int level, const char *fmt, ...)
{
    char line[LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (s->log_cb != NULL) {
        s->log_cb(level, line, s->log_data);
        return;
    }
    const char *name = level >= CONFIG_STORE_LOG_ERROR ? "error" : level == CONFIG_STORE_LOG_WARN ? "warn" : "info";
    fprintf(stderr, "llmrelay config_store %s: %s\n", name, line);
}

/* A provider name made safe for a log line: [A-Za-z0-9._:-] kept, anything else '?',
 * bounded (names come from etcd; a newline must not forge a log line). */
static const char *log_name(const char *name, char *buf, size_t cap)
{
    size_t n = 0;
    for (const char *c = name ? name : ""; *c != '\0' && n + 4 < cap && n < LOG_NAME_MAX; c++) {
        char ch = *c;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                  ch == '_' || ch == ':' || ch == '-';
        buf[n++] = ok ? ch : '?';
    }
    if (name != NULL && strlen(name) > n)
        for (int i = 0; i < 3 && n + 1 < cap; i++)
            buf[n++] = '.';
    buf[n] = '\0';
    return buf;
}

/* --- secrets at rest ---------------------------------------------------------------- */
static int api_key_aad(char *buf, size_t cap, const char *record, size_t index)
{
    int n = snprintf(buf, cap, "provider:%s:api_key:%zu", record ? record : "", index);
    return n < 0 || (size_t)n >= cap ? -EINVAL : n;
}

/* Frees a message; a provider's api_keys (plaintext in memory) are wiped first. */
static void msg_free(ProtobufCMessage *msg)
{
    if (msg == NULL)
        return;
    if (msg->descriptor == &llmrelay__provider__descriptor) {
        Llmrelay__Provider *p = (Llmrelay__Provider *)msg;
        for (size_t i = 0; i < p->n_api_keys; i++)
            if (p->api_keys[i] != NULL)
                explicit_bzero(p->api_keys[i], strlen(p->api_keys[i]));
    }
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void snapshot_free(Llmrelay__Snapshot *snap)
{
    if (snap == NULL)
        return;
    for (size_t i = 0; i < snap->n_providers; i++) {
        Llmrelay__Provider *p = snap->providers[i];
        for (size_t j = 0; p != NULL && j < p->n_api_keys; j++)
            if (p->api_keys[j] != NULL)
                explicit_bzero(p->api_keys[j], strlen(p->api_keys[j]));
    }
    llmrelay__snapshot__free_unpacked(snap, NULL);
}

/* Logs "stored in plaintext" once per provider name. */
static void warn_legacy(config_store_t *s, const char *name)
{
    for (size_t i = 0; i < s->n_legacy_warned; i++)
        if (strcmp(s->legacy_warned[i], name) == 0)
            return;
    if (s->n_legacy_warned < LEGACY_WARNED_MAX) {
        char **arr = realloc(s->legacy_warned, (s->n_legacy_warned + 1) * sizeof(*arr));
        char *dup = strdup(name);
        if (arr != NULL)
            s->legacy_warned = arr;
        if (arr != NULL && dup != NULL)
            s->legacy_warned[s->n_legacy_warned++] = dup;
        else
            free(dup);
    }
    char nb[LOG_NAME_MAX + 8];
    slog(s, CONFIG_STORE_LOG_WARN,
         "provider %s: upstream API keys are stored unencrypted (written before --secrets-key-file was set); "
         "re-save the provider to encrypt them",
         log_name(name, nb, sizeof(nb)));
}

/* Replaces, in place, every sealed api_keys[i] of p (unpacked with the default allocator)
 * by its plaintext; values that do not open are removed. record: the AAD's record name. */
static void provider_open(config_store_t *s, Llmrelay__Provider *p, const char *record)
{
    size_t kept = 0, failed = 0;
    bool legacy = false;
    for (size_t i = 0; i < p->n_api_keys; i++) {
        char *v = p->api_keys[i];
        if (!secrets_is_sealed(v)) {
            legacy |= s->key.loaded;
            p->api_keys[kept++] = v;
            continue;
        }
        char aad[320];
        int aad_len = api_key_aad(aad, sizeof(aad), record, i);
        uint8_t *plain = NULL;
        size_t len = 0;
        if (s->key.loaded && aad_len > 0 &&
            secrets_open(&s->key, v, (const uint8_t *)aad, (size_t)aad_len, &plain, &len) == 0) {
            p->api_keys[kept++] = (char *)plain; /* NUL-terminated */
        } else {
            failed++;
        }
        free(v); /* ciphertext */
    }
    p->n_api_keys = kept;
    char nb[LOG_NAME_MAX + 8];
    if (legacy)
        warn_legacy(s, record);
    if (failed > 0 && s->key.loaded)
        slog(s, CONFIG_STORE_LOG_ERROR,
             "provider %s: %zu upstream API key(s) cannot be decrypted (wrong --secrets-key-file, or altered); "
             "the provider keeps only the keys that opened until it is re-saved",
             log_name(record, nb, sizeof(nb)), failed);
    else if (failed > 0)
        slog(s, CONFIG_STORE_LOG_ERROR,
             "provider %s: %zu upstream API key(s) are encrypted but no --secrets-key-file is set; ignored",
             log_name(record, nb, sizeof(nb)), failed);
}

static void sealed_free(char **arr, size_t n)
{
    for (size_t i = 0; arr != NULL && i < n; i++)
        free(arr[i]);
    free(arr);
}

/* *out: p's api_keys sealed for record (n_api_keys strings; sealed_free). */
static int provider_seal(const config_store_t *s, const Llmrelay__Provider *p, const char *record, char ***out)
{
    *out = NULL;
    char **arr = calloc(p->n_api_keys ? p->n_api_keys : 1, sizeof(*arr));
    if (arr == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < p->n_api_keys; i++) {
        char aad[320];
        int aad_len = api_key_aad(aad, sizeof(aad), record, i);
        const char *v = p->api_keys[i] ? p->api_keys[i] : "";
        int rc = aad_len < 0 ? aad_len
                             : secrets_seal(&s->key, (const uint8_t *)v, strlen(v), (const uint8_t *)aad,
                                            (size_t)aad_len, &arr[i]);
        if (rc != 0) {
            sealed_free(arr, p->n_api_keys);
            return rc == -ENOMEM ? rc : -EIO;
        }
    }
    *out = arr;
    return 0;
}

/* --- tables ------------------------------------------------------------------------- */
static void table_clear(struct table *t)
{
    for (size_t i = 0; i < t->n; i++) {
        free(t->recs[i].id);
        msg_free(t->recs[i].msg);
    }
    free(t->recs);
    memset(t, 0, sizeof(*t));
}

/* Index of id, or of where it would go (*found false). */
static size_t table_find(const struct table *t, const char *id, bool *found)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = strcmp(t->recs[mid].id, id);
        if (cmp == 0) {
            *found = true;
            return mid;
        }
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

/* Takes ownership of msg. */
static int table_put(struct table *t, const char *id, ProtobufCMessage *msg)
{
    bool found;
    size_t i = table_find(t, id, &found);
    if (found) {
        msg_free(t->recs[i].msg);
        t->recs[i].msg = msg;
        return 0;
    }
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        struct rec *r = realloc(t->recs, cap * sizeof(*r));
        if (r == NULL) {
            msg_free(msg);
            return -ENOMEM;
        }
        t->recs = r;
        t->cap = cap;
    }
    char *dup = strdup(id);
    if (dup == NULL) {
        msg_free(msg);
        return -ENOMEM;
    }
    memmove(&t->recs[i + 1], &t->recs[i], (t->n - i) * sizeof(*t->recs));
    t->recs[i].id = dup;
    t->recs[i].msg = msg;
    t->n++;
    return 0;
}

static bool table_del(struct table *t, const char *id)
{
    bool found;
    size_t i = table_find(t, id, &found);
    if (!found)
        return false;
    free(t->recs[i].id);
    msg_free(t->recs[i].msg);
    memmove(&t->recs[i], &t->recs[i + 1], (t->n - i - 1) * sizeof(*t->recs));
    t->n--;
    return true;
}

/* Maps an etcd key to (table, id); false for keys the store does not keep. */
static bool parse_key(const config_store_t *s, const uint8_t *key, size_t len, enum table_kind *kind, char *id,
                      size_t id_size)
{
    if (len <= s->prefix_len || memcmp(key, s->prefix, s->prefix_len) != 0)
        return false;
    key += s->prefix_len;
    len -= s->prefix_len;
    for (int k = 0; k < T_COUNT; k++) {
        size_t dl = strlen(table_dirs[k]);
        if (len > dl && memcmp(key, table_dirs[k], dl) == 0) {
            size_t n = len - dl;
            if (n >= id_size || memchr(key + dl, '/', n) || memchr(key + dl, 0, n))
                return false;
            memcpy(id, key + dl, n);
            id[n] = '\0';
            *kind = (enum table_kind)k;
            return true;
        }
    }
    return false;
}

/* Applies a PUT (value != NULL) or DELETE to tables. Returns true if something changed. */
static bool apply(config_store_t *s, struct table *tables, const uint8_t *key, size_t key_len, const uint8_t *value,
                  size_t value_len, bool is_put)
{
    enum table_kind kind;
    char id[256];
    if (!parse_key(s, key, key_len, &kind, id, sizeof(id)))
        return false;
    if (!is_put)
        return table_del(&tables[kind], id);
    ProtobufCMessage *msg = protobuf_c_message_unpack(table_desc(kind), NULL, value_len, value);
    if (msg == NULL)
        return false; /* not a record we understand: keep what we had */
    if (kind == T_PROVIDERS)
        provider_open(s, (Llmrelay__Provider *)msg, id);
    return table_put(&tables[kind], id, msg) == 0;
}

/* --- view and notifications --------------------------------------------------------- */
static void view_rebuild(config_store_t *s)
{
    size_t *counts[T_COUNT] = {&s->view.n_providers, &s->view.n_keys, &s->view.n_tokens, &s->view.n_prices};
    for (int k = 0; k < T_COUNT; k++) {
        struct table *t = &s->tables[k];
        void **arr = realloc(s->view_arrays[k], (t->n ? t->n : 1) * sizeof(void *));
        if (arr == NULL) {
            *counts[k] = 0; /* out of memory: an empty list rather than a stale pointer */
            continue;
        }
        s->view_arrays[k] = arr;
        for (size_t i = 0; i < t->n; i++)
            arr[i] = t->recs[i].msg;
        *counts[k] = t->n;
    }
    s->view.providers = (Llmrelay__Provider **)s->view_arrays[T_PROVIDERS];
    s->view.keys = (Llmrelay__ApiKey **)s->view_arrays[T_KEYS];
    s->view.tokens = (Llmrelay__AdminToken **)s->view_arrays[T_TOKENS];
    s->view.prices = (Llmrelay__Price **)s->view_arrays[T_PRICES];
    s->view.revision = s->revision;
    s->view_dirty = false;
}

const Llmrelay__Snapshot *config_store_current(config_store_t *s)
{
    if (!s->loaded && s->file_snap != NULL)
        return s->file_snap;
    if (s->view_dirty)
        view_rebuild(s);
    return &s->view;
}

static void notify_cb(uv_timer_t *t)
{
    config_store_t *s = t->data;
    /* Last thing done here: the callback may destroy the store. */
    s->cb(s, config_store_current(s), s->data);
}

static uint64_t now_ms(const config_store_t *s)
{
    return uv_now(s->loop);
}

/* Saves snap with every provider's api_keys sealed (shallow copies pointing at the sealed
 * strings; the view itself is not touched). Nothing is written if a seal fails. */
static int save_sealed(config_store_t *s, const Llmrelay__Snapshot *snap)
{
    size_t n = snap->n_providers;
    Llmrelay__Provider *copies = calloc(n ? n : 1, sizeof(*copies));
    Llmrelay__Provider **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    size_t done = 0;
    int rc = copies && ptrs ? 0 : -ENOMEM;
    for (; rc == 0 && done < n; done++) {
        const Llmrelay__Provider *p = snap->providers[done];
        char **sealed;
        rc = provider_seal(s, p, p->name, &sealed);
        if (rc != 0)
            break;
        copies[done] = *p;
        copies[done].api_keys = sealed;
        ptrs[done] = &copies[done];
    }
    if (rc == 0) {
        Llmrelay__Snapshot copy = *snap;
        copy.providers = ptrs;
        rc = config_store_save_file(&copy, s->snapshot_path);
    }
    for (size_t i = 0; copies != NULL && i < done; i++)
        sealed_free(copies[i].api_keys, copies[i].n_api_keys);
    free(copies);
    free(ptrs);
    return rc;
}

static void save_now(config_store_t *s)
{
    s->save_pending = false;
    s->last_save_ms = now_ms(s);
    if (s->snapshot_path == NULL || !s->loaded)
        return;
    /* Errors are not fatal: the next change retries. Nothing here may reach a log. */
    if (s->key.loaded)
        (void)save_sealed(s, config_store_current(s));
    else
        (void)config_store_save_file(config_store_current(s), s->snapshot_path);
}

static void save_cb(uv_timer_t *t)
{
    save_now(t->data);
}

/* The view changed: notify on the next iteration, save within SAVE_INTERVAL_MS. */
static void changed(config_store_t *s)
{
    s->view_dirty = true;
    uv_timer_start(&s->notify_timer, notify_cb, 0, 0);
    if (s->snapshot_path != NULL && !s->save_pending) {
        uint64_t now = now_ms(s);
        uint64_t due = s->last_save_ms + SAVE_INTERVAL_MS;
        s->save_pending = true;
        uv_timer_start(&s->save_timer, save_cb, due > now ? due - now : 0, 0);
    }
}

/* --- load and watch ----------------------------------------------------------------- */
static void load_start(config_store_t *s);

static void retry_cb(uv_timer_t *t)
{
    load_start(t->data);
}

static void load_failed(config_store_t *s)
{
    for (int k = 0; k < T_COUNT; k++)
        table_clear(&s->staging[k]);
    s->loading = false;
    uint64_t delay = (uint64_t)RETRY_MIN_MS << (s->load_failures < 5 ? s->load_failures : 5);
    if (delay > RETRY_MAX_MS)
        delay = RETRY_MAX_MS;
    s->load_failures++;
    uv_timer_start(&s->retry_timer, retry_cb, delay, 0);
}

static void watch_cb(etcd_watch_t *w, int status, const etcd_watch_event_t *events, size_t n, int64_t revision,
                     int64_t compact_revision, void *data)
{
    config_store_t *s = data;
    (void)w;
    if (status < 0) {
        s->watch_healthy = false;
        return;
    }
    if (compact_revision > 0) {
        /* Missed events were compacted away: start over with a full load. */
        etcd_watch_stop(s->watch);
        s->watch = NULL;
        s->watch_healthy = false;
        load_start(s);
        return;
    }
    s->watch_healthy = true;
    bool any = false;
    for (size_t i = 0; i < n; i++)
        any |= apply(s, s->tables, events[i].kv.key, events[i].kv.key_len, events[i].kv.value, events[i].kv.value_len,
                     events[i].type == ETCD_EVENT_PUT);
    if (n > 0 && revision > s->revision) {
        s->revision = revision;
        any = true; /* the revision itself is part of the view */
    }
    if (any)
        changed(s);
}

static int load_page(config_store_t *s, const uint8_t *start, size_t start_len);

static void load_range_cb(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t n, bool more,
                          void *data)
{
    (void)c;
    config_store_t *s = data;
    if (status < 0) {
        load_failed(s);
        return;
    }
    if (s->load_rev == 0)
        s->load_rev = revision;
    for (size_t i = 0; i < n; i++)
        apply(s, s->staging, kvs[i].key, kvs[i].key_len, kvs[i].value, kvs[i].value_len, true);
    if (more && n > 0) {
        /* Next page starts right after the last key: last key + "\0". */
        size_t len = kvs[n - 1].key_len + 1;
        uint8_t *next = malloc(len);
        if (next == NULL) {
            load_failed(s);
            return;
        }
        memcpy(next, kvs[n - 1].key, len - 1);
        next[len - 1] = 0;
        int rc = load_page(s, next, len);
        free(next);
        if (rc != 0)
            load_failed(s);
        return;
    }
    /* Complete: swap the fresh tables in. */
    for (int k = 0; k < T_COUNT; k++) {
        table_clear(&s->tables[k]);
        s->tables[k] = s->staging[k];
        memset(&s->staging[k], 0, sizeof(s->staging[k]));
    }
    s->loading = false;
    s->load_failures = 0;
    s->revision = s->load_rev;
    s->loaded = true;
    if (s->file_snap != NULL) {
        snapshot_free(s->file_snap);
        s->file_snap = NULL;
    }
    if (s->watch != NULL)
        etcd_watch_stop(s->watch);
    s->watch = NULL;
    s->watch_healthy = false;
    size_t plen = s->prefix_len + strlen("config/");
    char *wp = malloc(plen + 1);
    if (wp != NULL) {
        snprintf(wp, plen + 1, "%sconfig/", s->prefix);
        s->watch = etcd_watch_prefix(s->etcd, (const uint8_t *)wp, plen, s->revision + 1, watch_cb, s);
        free(wp);
    }
    if (s->watch == NULL) {
        load_failed(s); /* try the whole thing again later */
    }
    changed(s);
}

static int load_page(config_store_t *s, const uint8_t *start, size_t start_len)
{
    size_t plen = s->prefix_len + strlen("config/");
    uint8_t end[512];
    if (plen > sizeof(end))
        return -EINVAL;
    char cfg[512];
    snprintf(cfg, sizeof(cfg), "%sconfig/", s->prefix);
    size_t end_len = etcd_prefix_end((const uint8_t *)cfg, plen, end);
    return etcd_range(s->etcd, start, start_len, end, end_len, PAGE_LIMIT, s->load_rev, load_range_cb, s);
}

static void load_start(config_store_t *s)
{
    if (s->loading)
        return;
    char cfg[512];
    int n = snprintf(cfg, sizeof(cfg), "%sconfig/", s->prefix);
    s->loading = true;
    s->load_rev = 0;
    if (load_page(s, (const uint8_t *)cfg, (size_t)n) != 0)
        load_failed(s);
}

/* --- lifecycle ---------------------------------------------------------------------- */
static void store_close_cb(uv_handle_t *h)
{
    config_store_t *s = h->data;
    if (--s->handles_open == 0)
        free(s);
}

int config_store_create(uv_loop_t *loop, etcd_client_t *etcd, const char *prefix, const char *snapshot_path,
                        config_store_update_cb cb, void *data, config_store_t **out)
{
    return config_store_create_ex(loop, etcd, prefix, snapshot_path, NULL, cb, data, out);
}

int config_store_create_ex(uv_loop_t *loop, etcd_client_t *etcd, const char *prefix, const char *snapshot_path,
                           const config_store_options_t *opts, config_store_update_cb cb, void *data,
                           config_store_t **out)
{
    *out = NULL;
    if (loop == NULL || etcd == NULL || cb == NULL)
        return -EINVAL;
    if (opts != NULL && opts->secrets_key != NULL && !opts->secrets_key->loaded)
        return -EINVAL;
    if (prefix == NULL)
        prefix = CONFIG_STORE_DEFAULT_PREFIX;
    if (strlen(prefix) > 256)
        return -EINVAL;
    config_store_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->loop = loop;
    s->etcd = etcd;
    s->cb = cb;
    s->data = data;
    s->prefix = strdup(prefix);
    s->prefix_len = strlen(prefix);
    s->snapshot_path = snapshot_path ? strdup(snapshot_path) : NULL;
    if (s->prefix == NULL || (snapshot_path && s->snapshot_path == NULL)) {
        free(s->prefix);
        free(s->snapshot_path);
        free(s);
        return -ENOMEM;
    }
    if (opts != NULL) {
        if (opts->secrets_key != NULL)
            s->key = *opts->secrets_key;
        s->log_cb = opts->log_cb;
        s->log_data = opts->log_data;
    }
    if (s->key.loaded)
        slog(s, CONFIG_STORE_LOG_INFO, "upstream API keys are stored encrypted (AES-256-GCM) in etcd and the snapshot");
    else
        slog(s, CONFIG_STORE_LOG_WARN,
             "no --secrets-key-file: upstream API keys are stored unencrypted in etcd and in the snapshot file");
    llmrelay__snapshot__init(&s->view);
    s->view_dirty = true;
    uv_timer_init(loop, &s->notify_timer);
    uv_timer_init(loop, &s->save_timer);
    uv_timer_init(loop, &s->retry_timer);
    s->notify_timer.data = s->save_timer.data = s->retry_timer.data = s;
    s->handles_open = 3;

    if (s->snapshot_path != NULL && config_store_load_file(s->snapshot_path, &s->file_snap) == 0) {
        for (size_t i = 0; i < s->file_snap->n_providers; i++)
            provider_open(s, s->file_snap->providers[i], s->file_snap->providers[i]->name);
        s->revision = s->file_snap->revision;
        uv_timer_start(&s->notify_timer, notify_cb, 0, 0);
    }
    load_start(s);
    *out = s;
    return 0;
}

void config_store_destroy(config_store_t *s)
{
    if (s == NULL)
        return;
    if (s->save_pending)
        save_now(s);
    etcd_cancel_data(s->etcd, s);
    while (s->writes != NULL) {
        struct write_ctx *w = s->writes;
        s->writes = w->next;
        etcd_cancel_data(s->etcd, w);
        free(w);
    }
    if (s->watch != NULL)
        etcd_watch_stop(s->watch);
    for (int k = 0; k < T_COUNT; k++) {
        table_clear(&s->tables[k]);
        table_clear(&s->staging[k]);
        free(s->view_arrays[k]);
    }
    if (s->file_snap != NULL)
        snapshot_free(s->file_snap);
    free(s->prefix);
    free(s->snapshot_path);
    for (size_t i = 0; i < s->n_legacy_warned; i++)
        free(s->legacy_warned[i]);
    free(s->legacy_warned);
    secrets_key_dispose(&s->key);
    uv_close((uv_handle_t *)&s->notify_timer, store_close_cb);
    uv_close((uv_handle_t *)&s->save_timer, store_close_cb);
    uv_close((uv_handle_t *)&s->retry_timer, store_close_cb);
}

bool config_store_synced(const config_store_t *s)
{
    return s->loaded && s->watch_healthy;
}

bool config_store_has_snapshot(const config_store_t *s)
{
    return s->loaded || s->file_snap != NULL;
}

int64_t config_store_revision(const config_store_t *s)
{
    return s->revision;
}

/* --- writes ------------------------------------------------------------------------- */
static void write_finish(config_store_t *s, struct write_ctx *w, int status)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        s->writes = w->next;
    if (w->next)
        w->next->prev = w->prev;
    config_store_done_cb cb = w->cb;
    void *data = w->data;
    free(w);
    if (cb != NULL)
        cb(s, status, data);
}

static void put_done(etcd_client_t *c, int status, int64_t revision, void *data)
{
    (void)c;
    (void)revision;
    struct write_ctx *w = data;
    write_finish(w->s, w, status);
}

static void delete_done(etcd_client_t *c, int status, int64_t revision, int64_t deleted, void *data)
{
    (void)c;
    (void)revision;
    struct write_ctx *w = data;
    write_finish(w->s, w, status == 0 && deleted == 0 ? -ENOENT : status);
}

static struct write_ctx *write_new(config_store_t *s, config_store_done_cb cb, void *data)
{
    struct write_ctx *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->s = s;
    w->cb = cb;
    w->data = data;
    w->next = s->writes;
    if (s->writes)
        s->writes->prev = w;
    s->writes = w;
    return w;
}

static void write_drop(config_store_t *s, struct write_ctx *w)
{
    w->cb = NULL;
    write_finish(s, w, 0);
}

static bool valid_name(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    return n > 0 && n < 200 && strchr(name, '/') == NULL;
}

static bool valid_hash(const char *h)
{
    if (h == NULL || strlen(h) != 64)
        return false;
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
            return false;
    return true;
}

static int put_record(config_store_t *s, enum table_kind kind, const char *id, const ProtobufCMessage *msg,
                      config_store_done_cb cb, void *data)
{
    char key[768];
    int klen = snprintf(key, sizeof(key), "%s%s%s", s->prefix, table_dirs[kind], id);
    size_t len = protobuf_c_message_get_packed_size(msg);
    if (len > 8192)
        return -EFBIG; /* etcd values are bounded at 8 KiB by design */
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return -ENOMEM;
    protobuf_c_message_pack(msg, buf);
    struct write_ctx *w = write_new(s, cb, data);
    int rc = w ? etcd_put(s->etcd, (const uint8_t *)key, (size_t)klen, buf, len, 0, put_done, w) : -ENOMEM;
    if (rc != 0 && w != NULL)
        write_drop(s, w);
    explicit_bzero(buf, len); /* may hold upstream API keys */
    free(buf);
    return rc;
}

int config_store_put_provider(config_store_t *s, const Llmrelay__Provider *p, config_store_done_cb cb, void *data)
{
    if (s == NULL || p == NULL || !valid_name(p->name))
        return -EINVAL;
    if (!s->key.loaded)
        return put_record(s, T_PROVIDERS, p->name, &p->base, cb, data);
    char **sealed;
    int rc = provider_seal(s, p, p->name, &sealed);
    if (rc != 0)
        return rc;
    Llmrelay__Provider copy = *p;
    copy.api_keys = sealed;
    rc = put_record(s, T_PROVIDERS, p->name, &copy.base, cb, data);
    sealed_free(sealed, p->n_api_keys);
    return rc;
}

int config_store_put_key(config_store_t *s, const Llmrelay__ApiKey *k, config_store_done_cb cb, void *data)
{
    if (s == NULL || k == NULL || !valid_hash(k->hash))
        return -EINVAL;
    return put_record(s, T_KEYS, k->hash, &k->base, cb, data);
}

int config_store_put_token(config_store_t *s, const Llmrelay__AdminToken *t, config_store_done_cb cb, void *data)
{
    if (s == NULL || t == NULL || !valid_hash(t->hash))
        return -EINVAL;
    return put_record(s, T_TOKENS, t->hash, &t->base, cb, data);
}

int config_store_delete_provider(config_store_t *s, const char *name, config_store_done_cb cb, void *data)
{
    if (s == NULL || !valid_name(name))
        return -EINVAL;
    char key[768];
    int klen = snprintf(key, sizeof(key), "%s%s%s", s->prefix, table_dirs[T_PROVIDERS], name);
    struct write_ctx *w = write_new(s, cb, data);
    if (w == NULL)
        return -ENOMEM;
    w->is_delete = true;
    int rc = etcd_delete(s->etcd, (const uint8_t *)key, (size_t)klen, NULL, 0, delete_done, w);
    if (rc != 0)
        write_drop(s, w);
    return rc;
}

/* --- snapshot file ------------------------------------------------------------------ */
int config_store_save_file(const Llmrelay__Snapshot *snap, const char *path)
{
    if (snap == NULL || path == NULL)
        return -EINVAL;
    Llmrelay__Snapshot copy = *snap;
    copy.saved_at = (int64_t)time(NULL);
    size_t len = llmrelay__snapshot__get_packed_size(&copy);
    if (len > MAX_SNAPSHOT_FILE)
        return -EFBIG;
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return -ENOMEM;
    llmrelay__snapshot__pack(&copy, buf);

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    int rc = 0, fd = -1;
    if (tmp == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    fchmod(fd, 0600); /* also when the tmp file pre-existed */
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : -EIO;
            goto out;
        }
        off += (size_t)n;
    }
    if (fsync(fd) != 0) {
        rc = -errno;
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = -errno;
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = -errno;
        goto out;
    }
    /* Make the rename itself durable. */
    char *slash = strrchr(tmp, '/');
    const char *dir = ".";
    if (slash != NULL) {
        *slash = '\0';
        dir = slash == tmp ? "/" : tmp;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
out:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    free(tmp);
    explicit_bzero(buf, len);
    free(buf);
    return rc;
}

int config_store_load_file(const char *path, Llmrelay__Snapshot **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -ENOENT : -errno;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (off_t)MAX_SNAPSHOT_FILE) {
        close(fd);
        return -EINVAL;
    }
    size_t len = (size_t)st.st_size;
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL) {
        close(fd);
        return -ENOMEM;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t n = read(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(fd);
    Llmrelay__Snapshot *snap = off == len ? llmrelay__snapshot__unpack(NULL, len, buf) : NULL;
    explicit_bzero(buf, len);
    free(buf);
    if (snap == NULL)
        return -EINVAL;
    *out = snap;
    return 0;
}
