/* main.c — the llmrelay daemon: settings, then the main loop that owns the shared-config
 * machinery (etcd client, config store, admin API, signals) while worker threads serve
 * clients (server.c).
 *
 * Config flows one way: the config store calls back on every change (or with the local
 * snapshot file at start, so the node serves while etcd is down), main compiles an
 * immutable snapshot and hands it to every worker by message.
 *
 * SIGTERM/SIGINT (and POST /admin/v1/drain) drain in the contract's order: readiness false,
 * stop accepting, GOAWAY, finish in-flight requests (bounded by --shutdown-timeout), hand the
 * quota shards off, announce leave, exit 0. SIGHUP reloads the TLS certificate. With --gossip, the node is a SWIM member
 * (gossip.c): once drained it announces a graceful leave, and keeps its gossip socket until
 * the leave has been gossiped (bounded) before it exits. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <uv.h>

#include "cluster/config_store.h"
#include "cluster/curl_uv.h"
#include "cluster/etcd.h"
#include "cluster/secrets.h"
#include "node/admin.h"
#include "node/clock.h"
#include "node/config.h"
#include "node/gossip.h"
#include "node/log.h"
#include "node/metering.h"
#include "node/metrics.h"
#include "node/metrics_ring.h"
#include "node/privacy.h"
#include "node/records.h"
#include "node/server.h"
#include "node/snapshot.h"

typedef struct node {
    llmrelay_config_t cfg;
    node_clock_t clock;
    metrics_t *metrics;
    records_t *records;
    metering_t *metering;
    uv_timer_t metering_timer, audit_timer;
    uv_timer_t clock_timer;
    uv_timer_t etcd_probe_timer; /* a small read every 2 s: notices a silent partition */
    bool etcd_probe_busy;
    uv_loop_t *loop;
    server_t server;
    curl_uv_t *curl;
    etcd_client_t *etcd;
    config_store_t *store;
    admin_t *admin;
    gossip_t *gossip; /* NULL without --gossip */
    metrics_ring_t *ring;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t shutdown_timer;
    bool draining;
    int exit_code;
    char *snapshot_path;
} node_t;

static void on_config(config_store_t *store, const Llmrelay__Snapshot *snap, void *data)
{
    node_t *n = data;
    (void)store;
    snapshot_t *s = snapshot_build(snap);
    if (s == NULL) {
        log_error("cannot build the config snapshot (out of memory); keeping the previous one");
        return;
    }
    /* The metrics name table of this config travels with the snapshot: a request resolves
     * its model's label slot by the model's index in the snapshot. */
    const char **models = calloc(s->n_models + 1, sizeof(char *));
    const char **providers = calloc(snap->n_providers + 1, sizeof(char *));
    metrics_names_t *names = NULL;
    if (models != NULL && providers != NULL) {
        for (size_t i = 0; i < s->n_models; i++)
            models[i] = s->models[i].name;
        for (size_t i = 0; i < snap->n_providers; i++)
            providers[i] = snap->providers[i]->name;
        if (metrics_names_update(n->metrics, models, s->n_models, providers, snap->n_providers,
                                 clock_now_ms(&n->clock), &names) == 0) {
            s->attached = names;
            s->attached_release = (void (*)(void *))metrics_names_release;
        }
    }
    free(models);
    free(providers);
    metrics_set_config_revision(n->metrics, snap->revision);
    metering_set_snapshot(n->metering, s);
    log_info("config revision %lld: %zu providers, %zu keys", (long long)snap->revision, snap->n_providers,
             snap->n_keys);
    server_publish(&n->server, s);
    snapshot_release(s);
}

static void on_meter_msg(void *data, meter_msg_t *msg)
{
    metering_on_msg(((node_t *)data)->metering, msg);
}

static void on_metering_timer(uv_timer_t *t)
{
    metering_tick(((node_t *)t->data)->metering);
}

/* ---- what the admin API asks of the node ---- */

static int64_t admin_now_ms(void *data)
{
    return clock_now_ms(&((node_t *)data)->clock);
}

static bool admin_key_spent(void *data, const char *key_id, int64_t *requests, int64_t *input_tokens,
                            int64_t *output_tokens, double *usd)
{
    return metering_key_spent(((node_t *)data)->metering, key_id, requests, input_tokens, output_tokens, usd);
}

typedef struct answer_ctx {
    admin_answer_cb done;
    void *done_ctx;
} answer_ctx_t;

/* The store answers errors in plain words; the admin API wants JSON or nothing. */
static void on_records_answer(void *ctx, int status, const char *json, size_t len)
{
    answer_ctx_t *a = ctx;
    if (status == 200)
        a->done(a->done_ctx, status, json, len);
    else
        a->done(a->done_ctx, status, NULL, 0);
    free(a);
}

static answer_ctx_t *answer_ctx_new(admin_answer_cb done, void *done_ctx)
{
    answer_ctx_t *a = malloc(sizeof(*a));
    if (a == NULL) {
        done(done_ctx, 503, NULL, 0);
        return NULL;
    }
    a->done = done;
    a->done_ctx = done_ctx;
    return a;
}

static void admin_query_logs(void *data, const admin_logs_query_t *q, admin_answer_cb done, void *done_ctx)
{
    node_t *n = data;
    answer_ctx_t *a = answer_ctx_new(done, done_ctx);
    if (a == NULL)
        return;
    records_logs_query_t rq = {
        .key_id = q->key_id[0] != '\0' ? q->key_id : NULL,
        .model = q->model[0] != '\0' ? q->model : NULL,
        .cursor = q->cursor[0] != '\0' ? q->cursor : NULL,
        .since_ms = q->since_ms,
        .until_ms = q->until_ms,
        .status = q->status != 0 ? q->status : q->status_class,
        .limit = (size_t)q->limit,
    };
    records_query_logs(n->records, &rq, on_records_answer, a);
}

static void admin_query_usage(void *data, const admin_usage_query_t *q, admin_answer_cb done, void *done_ctx)
{
    node_t *n = data;
    answer_ctx_t *a = answer_ctx_new(done, done_ctx);
    if (a == NULL)
        return;
    static const mstore_group_t by[] = {
        [ADMIN_USAGE_BY_NONE] = MSTORE_GROUP_NONE, [ADMIN_USAGE_BY_MODEL] = MSTORE_GROUP_MODEL,
        [ADMIN_USAGE_BY_HOUR] = MSTORE_GROUP_HOUR, [ADMIN_USAGE_BY_NODE] = MSTORE_GROUP_NODE,
        [ADMIN_USAGE_BY_KEY] = MSTORE_GROUP_KEY,
    };
    records_usage_query_t rq = {
        .key_id = q->key_id[0] != '\0' ? q->key_id : NULL,
        .since_ms = q->since_ms,
        .until_ms = q->until_ms,
        .by = (unsigned)q->by < sizeof(by) / sizeof(by[0]) ? by[q->by] : MSTORE_GROUP_NONE,
    };
    records_query_usage(n->records, &rq, on_records_answer, a);
}

/* The metric ring answers GET /admin/v1/metrics and cluster-wide usage. */
static void admin_query_metrics(void *data, const admin_metrics_query_t *q, admin_answer_cb done, void *done_ctx)
{
    metrics_ring_query_t mq = {.view = RING_VIEW_METRICS, .from_ms = q->since_ms, .to_ms = q->until_ms};
    snprintf(mq.node, sizeof(mq.node), "%.64s", q->node); /* node names are 1..64 characters */
    metrics_ring_query(((node_t *)data)->ring, &mq, done, done_ctx);
}

static void admin_query_ring_usage(void *data, const admin_usage_query_t *q, admin_answer_cb done, void *done_ctx)
{
    static const metrics_ring_group_t by[] = {[ADMIN_USAGE_BY_NONE] = RING_GROUP_NONE,
                                              [ADMIN_USAGE_BY_MODEL] = RING_GROUP_MODEL,
                                              [ADMIN_USAGE_BY_HOUR] = RING_GROUP_HOUR,
                                              [ADMIN_USAGE_BY_NODE] = RING_GROUP_NODE};
    metrics_ring_query_t mq = {.view = RING_VIEW_USAGE, .from_ms = q->since_ms, .to_ms = q->until_ms,
                               .by = (unsigned)q->by < sizeof(by) / sizeof(by[0]) ? by[q->by] : RING_GROUP_NONE};
    metrics_ring_query(((node_t *)data)->ring, &mq, done, done_ctx);
}

static size_t admin_channels(void *data, channels_row_t *rows, size_t cap, uint64_t *now_mono_ms)
{
    return server_channels_rows(&((node_t *)data)->server, rows, cap, now_mono_ms);
}

static size_t admin_channels_bound(void *data)
{
    return server_channels_bound(&((node_t *)data)->server);
}

static int admin_render_metrics(void *data, wipe_buf_t *out)
{
    node_t *n = data;
    metrics_set_etcd_reachable(n->metrics, etcd_client_reachable(n->etcd));
    int rc = metrics_render(n->metrics, out);
    if (rc != 0)
        return rc;
    /* The channels' breakers, as the workers last published them. */
    size_t cap = server_channels_bound(&n->server);
    channels_row_t *rows = cap > 0 ? calloc(cap, sizeof(*rows)) : NULL;
    size_t rows_n = rows != NULL ? server_channels_rows(&n->server, rows, cap, NULL) : 0;
    rc = metrics_render_channels(out, rows, rows_n);
    free(rows);
    return rc;
}

static void on_audit_sweep_timer(uv_timer_t *t)
{
    node_t *n = t->data;
    admin_audit_sweep(n->admin, clock_now_ms(&n->clock));
}

static void on_records(void *data, char *lines, size_t len)
{
    records_append(((node_t *)data)->records, lines, len);
}

static void on_store_log(int level, const char *msg, void *data)
{
    (void)data;
    log_write((log_level_t)level, "%s", msg);
}

/* GET /admin/v1/cluster: swim's members, or this node alone (owning every key) when gossip
 * is off. */
static int admin_cluster(void *data, const char *const *key_ids, size_t n_keys, admin_cluster_t *out)
{
    node_t *n = data;
    if (n->gossip != NULL) {
        const char *query_key = out->query_key;
        int rc = gossip_cluster(n->gossip, key_ids, n_keys, out);
        out->query_key = query_key;
        if (rc == 0)
            metering_cluster_view(n->metering, out);
        return rc;
    }
    admin_cluster_member_t *self = calloc(1, sizeof(*self));
    if (self == NULL)
        return -ENOMEM;
    snprintf(self->name, sizeof(self->name), "%s", n->cfg.name);
    snprintf(self->region, sizeof(self->region), "%s", n->cfg.region);
    snprintf(self->version, sizeof(self->version), "%s", LLMRELAY_VERSION);
    self->status = "alive";
    self->keys_owned = (int64_t)n_keys;
    out->members = self;
    out->n_members = 1;
    return 0;
}

static void on_admin_status(void *data, admin_status_t *out)
{
    out->draining = ((node_t *)data)->draining;
}

static void finish(node_t *n, int code)
{
    n->exit_code = code;
    uv_stop(n->loop);
}

static void on_drained(server_t *s)
{
    node_t *n = H2O_STRUCT_FROM_MEMBER(node_t, server, s);
    log_info("drained: every in-flight request finished");
    finish(n, 0);
}

/* etcd probe: the watch stream carries no traffic while nothing changes, so a partition that
 * silently drops packets (no reset, no refusal) goes unnoticed until TCP keepalive gives up
 * (about a minute). A one-key read every 2 s (5 s request timeout) notices it: on failure
 * the client marks etcd unreachable and the watches are reconnected, so /readyz and the
 * metrics say so and the config catches up as soon as etcd answers again. */
#define ETCD_PROBE_INTERVAL_MS 2000

static void on_etcd_probe_done(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t nkv,
                               bool more, void *data)
{
    (void)revision;
    (void)kvs;
    (void)nkv;
    (void)more;
    node_t *n = data;
    n->etcd_probe_busy = false;
    if (status != 0 && status != -ECANCELED) {
        log_warn("etcd probe failed (%s): reconnecting the config watch", strerror(-status));
        etcd_client_reset_watches(c, status);
    }
}

static void on_etcd_probe_timer(uv_timer_t *t)
{
    node_t *n = t->data;
    if (n->etcd_probe_busy || n->etcd == NULL)
        return;
    char key[512];
    int len = snprintf(key, sizeof(key), "%sprobe", n->cfg.etcd_prefix);
    if (len <= 0 || (size_t)len >= sizeof(key))
        return;
    if (etcd_range(n->etcd, (const uint8_t *)key, (size_t)len, NULL, 0, 1, 0, on_etcd_probe_done, n) == 0)
        n->etcd_probe_busy = true;
}

static void on_shutdown_timeout(uv_timer_t *t)
{
    node_t *n = t->data;
    log_warn("shutdown timeout: exiting with requests still in flight");
    finish(n, 0);
}

/* The drain of SIGTERM and of POST /admin/v1/drain, in DESIGN.md's order: readiness false
 * (n->draining, read by /readyz on this loop, is set before anything else), then each worker
 * stops accepting and sends GOAWAY (server_drain), in-flight requests finish (bounded by
 * --shutdown-timeout), and only then, once the loop has stopped, main() announces the leave
 * (gossip_leave) and exits 0. The leave is not announced here: members would move this
 * node's keys away while its in-flight requests still run. Between the drained requests and
 * the leave, main() hands the quota shards this node owns to their next owners
 * (metering_handoff_all). */
static void node_begin_drain(node_t *n, const char *why)
{
    if (n->draining)
        return;
    log_info("%s: draining (timeout %llu ms)", why, (unsigned long long)n->cfg.shutdown_timeout_ms);
    n->draining = true;
    server_drain(&n->server, on_drained);
    uv_timer_init(n->loop, &n->shutdown_timer);
    n->shutdown_timer.data = n;
    uv_timer_start(&n->shutdown_timer, on_shutdown_timeout, n->cfg.shutdown_timeout_ms, 0);
}

static void on_signal(uv_signal_t *h, int signum)
{
    node_t *n = h->data;
    if (signum == SIGHUP) {
        char err[256];
        if (server_reload_tls(&n->server, err, sizeof(err)) == 0)
            log_info("SIGHUP: TLS certificate reloaded");
        else
            log_error("SIGHUP: certificate reload failed, keeping the old one: %s", err);
        return;
    }
    if (n->draining) {
        log_warn("second termination signal: exiting now");
        finish(n, 0);
        return;
    }
    char why[32];
    snprintf(why, sizeof(why), "signal %d", signum);
    node_begin_drain(n, why);
}

/* POST /admin/v1/drain. This node (name NULL or its own): answer 202 first, then drain as on
 * SIGTERM (idempotent: a node already draining answers 202 again). Another node: 404 when
 * gossip does not know it as a live member; else the request goes to it over peer RPC (202
 * with "via"), or 501 when this node runs without --peer-listen. */
typedef struct refresh_ctx {
    admin_answer_cb done;
    void *done_ctx;
} refresh_ctx_t;

static void on_key_refreshed(void *ctx)
{
    refresh_ctx_t *rc = ctx;
    rc->done(rc->done_ctx, 200, NULL, 0);
    free(rc);
}

static void admin_refresh_key(void *data, const char *key_id, admin_answer_cb done, void *done_ctx)
{
    node_t *n = data;
    refresh_ctx_t *rc = malloc(sizeof(*rc));
    if (rc == NULL) {
        done(done_ctx, 200, NULL, 0);
        return;
    }
    rc->done = done;
    rc->done_ctx = done_ctx;
    metering_refresh_key(n->metering, key_id, on_key_refreshed, rc);
}

static void admin_drain(void *data, const char *name, admin_answer_cb done, void *done_ctx)
{
    node_t *n = data;
    char body[256];
    int len;
    if (name == NULL || strcmp(name, n->cfg.name) == 0) {
        len = snprintf(body, sizeof(body), "{\"node\":\"%s\",\"draining\":true}", n->cfg.name);
        done(done_ctx, 202, body, (size_t)len); /* sent before the drain closes anything */
        if (!n->draining)
            node_begin_drain(n, "admin call");
        return;
    }
    bool member = false;
    admin_cluster_t c = {0};
    if (n->gossip != NULL && gossip_cluster(n->gossip, NULL, 0, &c) == 0)
        for (size_t i = 0; i < c.n_members; i++)
            if (strcmp(c.members[i].name, name) == 0 && c.members[i].status != NULL &&
                (strcmp(c.members[i].status, "alive") == 0 || strcmp(c.members[i].status, "suspect") == 0))
                member = true;
    free(c.members);
    if (!member) {
        len = snprintf(body, sizeof(body),
                       "{\"error\":{\"message\":\"unknown node %s\",\"type\":\"not_found_error\","
                       "\"code\":\"not_found\"}}",
                       name);
        done(done_ctx, 404, body, (size_t)len);
        return;
    }
    /* Forwarded over peer RPC (one-way: queued here, the member drains when it arrives). */
    int rc = metering_drain_remote(n->metering, name, n->cfg.name);
    if (rc == 0) {
        len = snprintf(body, sizeof(body), "{\"node\":\"%s\",\"draining\":true,\"via\":\"%s\"}", name, n->cfg.name);
        done(done_ctx, 202, body, (size_t)len);
        return;
    }
    len = snprintf(body, sizeof(body),
                   "{\"error\":{\"message\":\"draining another node needs peer RPC (--peer-listen) on both "
                   "nodes\",\"type\":\"api_error\",\"code\":\"not_implemented\"}}");
    done(done_ctx, 501, body, (size_t)len);
}

/* A member asked this node to drain (POST /admin/v1/drain {"node": this} on that member). */
static void on_peer_drain(void *data, const char *by)
{
    node_t *n = data;
    if (n->draining)
        return;
    char why[96];
    snprintf(why, sizeof(why), "drain asked by member %s", by);
    node_begin_drain(n, why);
}

static void on_clock_timer(uv_timer_t *t)
{
    node_t *n = t->data;
    if (clock_poll(&n->clock)) {
        log_info("test clock: offset now %lld ms", (long long)atomic_load(&n->clock.offset_ms));
        records_sweep_now(n->records);
        if (n->admin != NULL)
            admin_audit_sweep(n->admin, clock_now_ms(&n->clock));
    }
}

static int make_data_dir(const char *path)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int main(int argc, char **argv)
{
    static node_t node;
    node_t *n = &node;
    char err[512];
    int ret = config_parse(&n->cfg, argc, argv, err, sizeof(err));
    if (ret == 1)
        return 0;
    if (ret < 0) {
        fprintf(stderr, "llmrelay: %s\n", err);
        return 2;
    }
    log_set_level(n->cfg.log_level);
#ifdef LLMRELAY_NO_WIPE
    log_warn("this build leaves content in memory (-DLLMRELAY_NO_WIPE: benchmark only); never serve real traffic with it");
#endif
    /* No core dump may hold content; /proc/PID/mem becomes root-only; no buffer spills to
     * /tmp; freed memory and h2o's recycled blocks are wiped (privacy.c, wipefree.c). A
     * build where the wiping is not in force does not serve. */
    if ((ret = privacy_process_init()) != 0) {
        log_error("privacy: freed memory or h2o's recycled blocks would keep content (%s); not starting",
                  strerror(-ret));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    if ((ret = make_data_dir(n->cfg.data_dir)) != 0) {
        fprintf(stderr, "llmrelay: cannot create --data-dir %s: %s\n", n->cfg.data_dir, strerror(-ret));
        return 1;
    }
    size_t plen = strlen(n->cfg.data_dir) + 32;
    n->snapshot_path = malloc(plen);
    snprintf(n->snapshot_path, plen, "%s/snapshot.pb", n->cfg.data_dir);

    if ((ret = clock_init(&n->clock)) != 0) {
        fprintf(stderr, "llmrelay: cannot read LLMRELAY_CLOCK_FILE: %s\n", strerror(-ret));
        return 2;
    }
    if (metrics_create(&n->metrics, n->cfg.workers, LLMRELAY_VERSION) != 0) {
        fprintf(stderr, "llmrelay: out of memory\n");
        return 1;
    }
    n->loop = uv_default_loop();
    if (n->clock.file != NULL) {
        log_warn("test clock: LLMRELAY_CLOCK_FILE is set, calendar time is offset by %lld ms",
                 (long long)atomic_load(&n->clock.offset_ms));
        uv_timer_init(n->loop, &n->clock_timer);
        n->clock_timer.data = n;
        uv_timer_start(&n->clock_timer, on_clock_timer, 100, 100);
        uv_unref((uv_handle_t *)&n->clock_timer);
    }
    if ((ret = records_open(n->loop, n->cfg.data_dir, &n->clock, (int64_t)n->cfg.retention_ms, &n->records)) != 0) {
        fprintf(stderr, "llmrelay: cannot open the metadata store in %s: %s\n", n->cfg.data_dir, strerror(-ret));
        return 1;
    }
    n->server.records_cb = on_records;
    n->server.records_data = n;
    if ((ret = metering_create(&n->server, &n->clock, n->cfg.data_dir, &n->metering)) != 0) {
        fprintf(stderr, "llmrelay: cannot start metering: %s\n", strerror(-ret));
        return 1;
    }
    n->server.meter_cb = on_meter_msg;
    n->server.meter_data = n;
    uv_timer_init(n->loop, &n->metering_timer);
    n->metering_timer.data = n;
    uv_timer_start(&n->metering_timer, on_metering_timer, 1000, 1000);
    uv_unref((uv_handle_t *)&n->metering_timer);
    if ((ret = server_start(&n->server, &n->cfg, &n->clock, n->metrics, n->loop, err, sizeof(err))) != 0) {
        fprintf(stderr, "llmrelay: %s\n", err);
        return 1;
    }
    n->curl = curl_uv_create(n->loop);
    if (n->curl == NULL || etcd_client_create(n->loop, n->curl, n->cfg.etcd, &n->etcd) != 0) {
        fprintf(stderr, "llmrelay: bad --etcd %s\n", n->cfg.etcd);
        return 2;
    }
    secrets_key_t skey = {0};
    if (n->cfg.secrets_key_file != NULL && (ret = secrets_key_load(n->cfg.secrets_key_file, &skey)) != 0) {
        fprintf(stderr, "llmrelay: --secrets-key-file %s: %s\n", n->cfg.secrets_key_file, secrets_key_error(ret));
        return 2;
    }
    config_store_options_t store_opts = {
        .secrets_key = skey.loaded ? &skey : NULL, .log_cb = on_store_log, .log_data = n};
    ret = config_store_create_ex(n->loop, n->etcd, n->cfg.etcd_prefix, n->snapshot_path, &store_opts, on_config, n,
                                 &n->store);
    secrets_key_dispose(&skey);
    if (ret != 0) {
        fprintf(stderr, "llmrelay: cannot start the config store\n");
        return 1;
    }
    admin_node_ops_t admin_ops = {
        .data = n,
        .now_ms = admin_now_ms,
        .status = on_admin_status,
        .key_spent = admin_key_spent,
        .query_logs = admin_query_logs,
        .query_usage = admin_query_usage,
        .query_metrics = admin_query_metrics,
        .query_ring_usage = admin_query_ring_usage,
        .etcd = n->etcd,
        .render_metrics = admin_render_metrics,
        .cluster = admin_cluster,
        .drain = admin_drain,
        .refresh_key = admin_refresh_key,
        .channels = admin_channels,
        .channels_bound = admin_channels_bound,
    };
    metrics_ring_options_t ring_opts = {.loop = n->loop, .etcd = n->etcd, .prefix = n->cfg.etcd_prefix,
                                        .node = n->cfg.name, .clock = &n->clock, .metrics = n->metrics,
                                        .store = n->store, .retention_ms = (int64_t)n->cfg.retention_ms};
    if ((ret = metrics_ring_start(&ring_opts, &n->ring)) != 0) {
        fprintf(stderr, "llmrelay: cannot start the metrics ring: %s\n", strerror(-ret));
        return 1;
    }
    if ((ret = admin_start(n->loop, &n->cfg, n->store, &admin_ops, &n->admin, err, sizeof(err))) != 0) {
        fprintf(stderr, "llmrelay: %s\n", err);
        return 1;
    }
    if (n->cfg.gossip != NULL) {
        secrets_key_t ckey = {0};
        if (n->cfg.cluster_key_file == NULL) {
            fprintf(stderr, "llmrelay: --gossip needs --cluster-key-file (gossip packets are sealed)\n");
            return 2;
        }
        if ((ret = secrets_key_load(n->cfg.cluster_key_file, &ckey)) != 0) {
            fprintf(stderr, "llmrelay: --cluster-key-file %s: %s\n", n->cfg.cluster_key_file, secrets_key_error(ret));
            return 2;
        }
        ret = gossip_start(n->loop, &n->cfg, ckey.bytes, sizeof(ckey.bytes), n->etcd, &n->gossip, err,
                           sizeof(err));
        /* Sharded quota over peer RPC needs --peer-listen; without it the node gossips
         * but keeps its keys' counters to itself. */
        if (ret == 0 && n->cfg.peer_listen != NULL) {
            ret = metering_enable_cluster(n->metering, n->loop, n->cfg.name, ckey.bytes, sizeof(ckey.bytes), n->gossip,
                                          err, sizeof(err));
            metering_set_drain_handler(n->metering, on_peer_drain, n);
            if (ret == 0)
                metering_set_etcd(n->metering, n->etcd, n->cfg.etcd_prefix);
        }
        else if (ret == 0)
            log_warn("--gossip without --peer-listen: key quotas are not shared with the cluster");
        secrets_key_dispose(&ckey);
        if (ret != 0) {
            fprintf(stderr, "llmrelay: %s\n", err);
            return 1;
        }
    } else if (n->cfg.join != NULL) {
        log_warn("--join is ignored without --gossip: running as a single node");
    }
    /* Audit entries older than 7 days go, by their timestamps (not etcd leases). */
    uv_timer_init(n->loop, &n->audit_timer);
    n->audit_timer.data = n;
    uv_timer_start(&n->audit_timer, on_audit_sweep_timer, 5000, 3600 * 1000);
    uv_unref((uv_handle_t *)&n->audit_timer);
    uv_timer_init(n->loop, &n->etcd_probe_timer);
    n->etcd_probe_timer.data = n;
    uv_timer_start(&n->etcd_probe_timer, on_etcd_probe_timer, ETCD_PROBE_INTERVAL_MS, ETCD_PROBE_INTERVAL_MS);
    uv_unref((uv_handle_t *)&n->etcd_probe_timer);
    uv_signal_init(n->loop, &n->sig_term);
    uv_signal_init(n->loop, &n->sig_int);
    uv_signal_init(n->loop, &n->sig_hup);
    n->sig_term.data = n->sig_int.data = n->sig_hup.data = n;
    uv_signal_start(&n->sig_term, on_signal, SIGTERM);
    uv_signal_start(&n->sig_int, on_signal, SIGINT);
    uv_signal_start(&n->sig_hup, on_signal, SIGHUP);

    log_info("llmrelay %s node %s: %d workers, listen %s%s%s, admin %s, etcd %s", LLMRELAY_VERSION, n->cfg.name,
             n->cfg.workers, n->cfg.listen, n->cfg.listen_plain ? ", plain " : "",
             n->cfg.listen_plain ? n->cfg.listen_plain : "", n->cfg.admin_listen, n->cfg.etcd);
    uv_run(n->loop, UV_RUN_DEFAULT);

    /* A node leaving the cluster hands the keys it owns to their next owners, then tells it
     * (bounded by GOSSIP_LEAVE_MAX_MS) before it goes. */
    metering_handoff_all(n->metering);
    uv_run(n->loop, UV_RUN_NOWAIT);
    uint64_t ckpt_deadline = uv_now(n->loop) + 3000;
    while (metering_checkpoints_pending(n->metering) && uv_now(n->loop) < ckpt_deadline &&
           uv_run(n->loop, UV_RUN_ONCE) != 0)
        uv_update_time(n->loop);
    gossip_leave(n->gossip);
    while (!gossip_leave_done(n->gossip) && uv_run(n->loop, UV_RUN_ONCE) != 0)
        ;
    metering_stop_cluster(n->metering);
    gossip_stop(n->gossip);
    n->gossip = NULL;
    uv_timer_stop(&n->etcd_probe_timer);
    server_stop(&n->server);
    /* Every worker has flushed its last batch; store it and sync before leaving. */
    uv_run(n->loop, UV_RUN_NOWAIT);
    metering_checkpoint(n->metering);
    bool records_closed = false;
    records_close(n->records, &records_closed);
    while (!records_closed && uv_run(n->loop, UV_RUN_ONCE) != 0)
        ;
    bool ring_stopped = false; /* the last slot goes to etcd (bounded by 2 s) */
    metrics_ring_stop(n->ring, &ring_stopped);
    while (!ring_stopped && uv_run(n->loop, UV_RUN_ONCE) != 0)
        ;
    admin_stop(n->admin);
    config_store_destroy(n->store);
    etcd_client_destroy(n->etcd);
    curl_uv_destroy(n->curl);
    log_info("exit %d", n->exit_code);
    fflush(stdout);
    exit(n->exit_code);
}
