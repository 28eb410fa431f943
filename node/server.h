/* server.h — the client-facing server: worker threads, listeners, TLS, request dispatch.
 *
 * Each worker thread owns one uv loop, one h2o context, one curl multi (curl_uv) and its own
 * SO_REUSEPORT listening sockets (TLS and, optionally, cleartext); nothing on the request
 * path is shared with another thread except the immutable config snapshot. The main thread
 * talks to workers only by message (h2o_multithread queues): a new snapshot, a new TLS
 * context after SIGHUP, drain. Workers answer the main thread the same way.
 *
 * Ownership: server_start borrows cfg for the server's lifetime. Snapshots passed to
 * server_publish are retained by each worker; the caller keeps its own reference. */
#ifndef LLMRELAY_NODE_SERVER_H
#define LLMRELAY_NODE_SERVER_H

#include <h2o.h>
#include <h2o/multithread.h>
#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

#include "cluster/curl_uv.h"
#include "node/channels.h"
#include "node/clock.h"
#include "node/config.h"
#include "node/log.h"
#include "node/metrics.h"
#include "node/snapshot.h"

typedef struct server server_t;
struct meter_msg;
struct meter_worker;

/* Per-connection count of client stream resets, for the HTTP/2 Rapid Reset defence. */
typedef struct reset_entry {
    uint64_t conn_id;
    uint64_t window_start_ms;
    uint32_t count;
} reset_entry_t;

#define SERVER_RESET_SLOTS 1024
#define SERVER_RESET_WINDOW_MS 1000
#define SERVER_RESET_LIMIT 64 /* resets per connection per window before GOAWAY */

/* How often each worker publishes its breaker rows for the admin API and /metrics. */
#define SERVER_CHANNELS_PUBLISH_MS 300

/* A worker's latest channels_table_export, for the main thread: written by the worker on its
 * housekeeping timer, read by server_channels_rows, both under lock (never on the request
 * path). rows is malloc'd, owned by the worker's entry. */
typedef struct worker_channels_pub {
    uv_mutex_t lock;
    channels_row_t *rows;
    size_t n, cap;
} worker_channels_pub_t;

typedef struct worker {
    h2o_context_t ctx; /* first: requests reach their worker through req->conn->ctx */
    server_t *server;
    int index;
    uv_loop_t loop;
    uv_thread_t thread;
    h2o_accept_ctx_t accept_tls, accept_plain;
    uv_tcp_t listen_tls, listen_plain;
    bool has_tls, has_plain, listening;
    int fd_tls, fd_plain;
    curl_uv_t *curl;
    h2o_multithread_receiver_t receiver; /* messages from the main thread */
    snapshot_t *snapshot;                /* current; one reference held */
    SSL_CTX *ssl_ctx;                    /* current; one reference held */
    size_t inflight;                     /* relays not yet finished (including drains) */
    bool draining;
    void *upstream_h1; /* upstream_h1.c's per-worker state (keep-alive pools) */
    metrics_shard_t *metrics; /* this worker's counters; written only by this thread */
    struct meter_worker *meter; /* metering.c's lessees of this worker */
    struct relay *relay_cache;  /* relay.c's finished relays, kept for reuse */
    unsigned relay_cache_n;
    struct relay *start_head, *start_tail; /* relay.c's relays to start in the check phase */
    struct relay *release_head;            /* relay.c's finished relays, recycled then */
    struct relay *flush_head;              /* relay.c's relays with bytes to send then */
    uv_check_t start_check;
    bool start_check_ready;
    uint64_t rng[2];   /* xorshift128+ state, seeded from RAND_bytes: cheap non-secret randomness */
    uv_timer_t housekeeping;
    unsigned housekeeping_ticks;
    /* Per-worker circuit breakers (node/channels.h): created at worker start from
     * cfg->breaker, synced with the providers of every snapshot the worker swaps in. Used by
     * this worker's relays only (now_ms = uv_now(&w->loop)). */
    struct channels_table *channels;
    worker_channels_pub_t channels_pub;
    uv_timer_t log_flush; /* writes the batched metadata lines every 50 ms */
    char *log_buf;
    size_t log_len;
    uv_sem_t started, stopped;
    reset_entry_t resets[SERVER_RESET_SLOTS];
} worker_t;

struct server {
    const llmrelay_config_t *cfg;
    const node_clock_t *clock; /* calendar time (test-controllable); owned by main */
    metrics_t *metrics;        /* owned by main; each worker writes its own shard */
    h2o_globalconf_t globalconf;
    X509_STORE *upstream_extra_cas; /* certificates of --upstream-ca-file, or NULL */
    STACK_OF(X509) * upstream_cas;
    worker_t *workers;
    int n_workers;
    uv_loop_t *main_loop;
    h2o_multithread_queue_t *main_queue;
    h2o_multithread_receiver_t main_receiver; /* messages from workers */
    atomic_int workers_idle;                  /* workers that finished draining */
    void (*drained_cb)(server_t *s);          /* called on the main loop once every worker drained */
    /* Set before server_start: receives each worker's batch of metadata lines on the main
     * loop and takes ownership of the malloc'd buffer. */
    void (*records_cb)(void *data, char *lines, size_t len);
    void *records_data;
    /* Set before server_start: receives the workers' metering messages on the main loop
     * (takes ownership of the meter_msg_t). */
    void (*meter_cb)(void *data, struct meter_msg *msg);
    void *meter_data;
    /* Set by main when the node is part of a cluster (gossip on): final settles then wait
     * for the owner's acknowledgement before a response ends (node/metering.h). */
    atomic_bool clustered;
};

/* Binds every listener (so an address in use is reported at once), builds the TLS context
 * and starts cfg->workers threads. *s must be zeroed except for the hooks set beforehand. Returns 0 or a negative error with a message in err. */
int server_start(server_t *s, const llmrelay_config_t *cfg, const node_clock_t *clock, metrics_t *metrics,
                 uv_loop_t *main_loop, char *err, size_t errlen);

/* The breaker rows of every worker, merged (channels_rows_merge): at most cap rows ordered
 * by (provider, key_index), as the workers last published them (at most
 * SERVER_CHANNELS_PUBLISH_MS old). Returns the number of rows filled. *now_mono_ms (when
 * not NULL) gets the monotonic clock (uv_hrtime in ms, the clock of uv_now) to compare
 * the rows' last_change_ms with. Main thread (any thread, in fact: it only takes the
 * workers' publication locks). */
size_t server_channels_rows(server_t *s, channels_row_t *rows, size_t cap, uint64_t *now_mono_ms);
/* An upper bound of the rows server_channels_rows can return now (the sum of the workers'
 * published rows): a size for its buffer. */
size_t server_channels_bound(server_t *s);

/* Gives every worker the new snapshot (each takes its own reference). Main thread only. */
void server_publish(server_t *s, snapshot_t *snap);

/* Rebuilds the TLS context from the certificate files and hands it to every worker;
 * connections already open keep theirs. Returns 0 or a negative error (the old context
 * stays). Main thread only. */
int server_reload_tls(server_t *s, char *err, size_t errlen);

/* Graceful drain: stop accepting, GOAWAY/close idle connections, let in-flight requests
 * finish. cb runs on the main loop once every worker has no request left. */
void server_drain(server_t *s, void (*cb)(server_t *s));

/* Stops the worker loops and waits until each has stopped (after server_drain, or on
 * timeout); the threads stay parked until the process exits. */
void server_stop(server_t *s);

/* Worker side, used by the relay. */
static inline worker_t *worker_of(h2o_req_t *req)
{
    return (worker_t *)req->conn->ctx;
}

/* A non-secret pseudo-random number (load spreading, request ids): xorshift128+. */
static inline uint64_t worker_rand(worker_t *w)
{
    uint64_t x = w->rng[0], y = w->rng[1];
    w->rng[0] = y;
    x ^= x << 23;
    w->rng[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
    return w->rng[1] + y;
}

/* Queues one metadata record; the worker writes its queued lines in one write(2) at the
 * end of the loop iteration (or when the batch is full). */
void worker_log_record(worker_t *w, const log_record_t *rec);

/* A relay of this worker has ended (its upstream transfer is over); drain accounting. */
void server_relay_finished(worker_t *w);

/* Metering messages between the threads (ownership passes with the message). */
void server_send_to_main(worker_t *w, struct meter_msg *msg);
void server_send_to_worker(server_t *s, int worker, struct meter_msg *msg);

/* Gives ctx a fresh self-signed P-256 certificate for name (not kept anywhere). 0 or -EIO
 * with a message in err. */
int server_tls_self_signed(SSL_CTX *ctx, const char *name, char *err, size_t errlen);

/* Makes an upstream transfer trust --upstream-ca-file's CAs besides the system's. */
void server_curl_tls_setup(server_t *s, CURL *easy);

/* Counts a client reset of a stream on conn; sends GOAWAY and stops reading new streams when
 * the connection exceeds SERVER_RESET_LIMIT resets per window. */
void server_count_reset(worker_t *w, h2o_conn_t *conn, int http_version);

#endif
