/* relay.h — the OpenAI-format client API of a worker: auth, routing, and the relay of one
 * request to its upstream provider and of the answer back to the client.
 *
 * relay_on_req is the h2o handler of every client listener. It runs on a worker thread and
 * reaches everything it needs through the worker (worker_of(req)): the config snapshot,
 * the curl multi, the settings. */
#ifndef LLMRELAY_NODE_RELAY_H
#define LLMRELAY_NODE_RELAY_H

#include <h2o.h>

/* Bytes of upstream data waiting for a slow client before the upstream is paused. */
#define RELAY_PAUSE_AT (64 * 1024)
/* Largest single SSE event relayed. */
#define RELAY_MAX_EVENT (4 * 1024 * 1024)

int relay_on_req(h2o_handler_t *self, h2o_req_t *req);

#endif
