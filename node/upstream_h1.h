/* upstream_h1.h — per-worker state of the HTTP/1.1 upstream backend (upstream_h1.c).
 *
 * upstream_h1_start (declared in node/upstream.h) serves cleartext http:// upstreams over
 * libuv TCP handles, with one keep-alive pool of its own per upstream host:port per worker.
 * The per-worker state hangs off worker_t.upstream_h1 and is owned by the worker's thread;
 * nothing in it is shared with another thread.
 *
 * Ownership: upstream_h1_worker_init allocates w->upstream_h1 (owned by the worker until
 * upstream_h1_worker_dispose). The worker's loop and server config are borrowed for the
 * lifetime of that state. */
#ifndef LLMRELAY_NODE_UPSTREAM_H1_H
#define LLMRELAY_NODE_UPSTREAM_H1_H

#include "node/server.h"

/* Upstream hosts (host:port pairs) with a connection pool per worker; further hosts go to curl. */
#define UPSTREAM_H1_MAX_POOLS 64
/* Idle keep-alive connections kept per pool; a connection finishing past this is closed. */
#define UPSTREAM_H1_MAX_IDLE 1024
/* How long an idle pooled connection is kept (h2o's proxy default): short enough that
 * upstream servers (typically 5 s or more) rarely close one under us. Idle connections are
 * swept every quarter of this. */
#define UPSTREAM_H1_POOL_IDLE_MS 2000

/* Sets up w->upstream_h1 on w->loop (the connect timeout from w->server->cfg; 10 s when
 * w->server is NULL). Call on the worker's thread once w->loop is initialised (server.c does
 * it after h2o_context_init). Optional: upstream_h1_start does it on first use. Returns 0 or
 * -ENOMEM. */
int upstream_h1_worker_init(worker_t *w);

/* Closes every pooled connection and frees w->upstream_h1 (NULL afterwards). No upstream of
 * this backend may be in flight. The memory is released from the loop once libuv has
 * closed the timers and connections: run the loop afterwards (tests do; a parked worker
 * needs not). */
void upstream_h1_worker_dispose(worker_t *w);

/* Idle keep-alive connections in all of w's pools (0 before init), for tests and metrics. */
size_t upstream_h1_idle_count(const worker_t *w);

#endif
