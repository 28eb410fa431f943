/* peer.h — peer RPC between nodes on the main uv loop: an h2o server on --peer-listen and a
 * libcurl client (HTTP/2 with prior knowledge, multiplexed), both over cluster/peer_frame.h
 * (HMAC-SHA256 under the cluster key, time window, replay window) carrying one
 * PeerEnvelope (proto/peer.proto) per POST /peer/v1.
 *
 * Transport: HTTP/2 over TLS 1.3 (ALPN h2). Without peer certificates the listener uses a
 * throw-away self-signed one that clients do not verify: the frame's HMAC under the cluster
 * key is what authenticates a peer. With --peer-tls-cert/--peer-tls-key the listener
 * presents that chain, and with --peer-ca-file a client refuses a peer whose certificate
 * does not chain to those CAs (names are not checked: peers are reached by address). Not h2c: Debian's libcurl 7.88.1 breaks an HTTP/2 prior-knowledge connection on
 * its second request ("Error in the HTTP2 framing layer", curl issue 10634, fixed in 8.0).
 *
 * Messaging is one-way and batched: peer_send queues a message for a destination; all the
 * messages queued for one destination in one loop iteration leave in one POST (at most
 * PEER_MAX_INFLIGHT POSTs in flight per destination; more waits for the next slot). The
 * answer only says "received" (200), "refused" (403: frame did not verify), "bad" (400) or
 * "incompatible" (409: another major protocol version, logged by both sides); answers are
 * sealed too. A batch that fails is dropped and counted: the layer above retries what must
 * arrive (see node/cluster_meter.c).
 *
 * Received messages are handed to the callback one by one, from the main loop, with the
 * sender's name and incarnation (boot id) from the authenticated envelope; a message whose
 * body this build does not know is counted (unknown_messages) and skipped.
 *
 * Content never travels here: only key ids, request keys, counts and amounts.
 *
 * Ownership: peer_start borrows loop; the key is copied into the frame contexts. peer_stop
 * closes the listener and connections and cancels transfers; the peer_t frees itself once
 * its handles are closed (run the loop afterwards). Not thread-safe: main loop only. */
#ifndef LLMRELAY_NODE_PEER_H
#define LLMRELAY_NODE_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "peer.pb-c.h"

#define PEER_MAX_INFLIGHT 4
#define PEER_TIMEOUT_MS 3000
#define PEER_MAX_QUEUED ((size_t)8 << 20) /* bytes queued per destination; beyond: dropped */

typedef struct peer peer_t;

typedef void (*peer_message_cb)(void *data, const char *sender, uint64_t boot_id, const Llmrelay__PeerMessage *msg);

typedef struct peer_stats {
    uint64_t batches_sent, messages_sent, batches_failed, messages_dropped;
    uint64_t batches_received, messages_received, unknown_messages;
    uint64_t refused_frames, refused_version, bad_envelopes;
} peer_stats_t;

/* Listens on listen (ADDR:PORT; NULL: client only). self is this node's name. Returns 0
 * with *out set, or a negative errno with a one-line message in err. */
typedef struct peer_tls {
    const char *cert, *key; /* the listener's certificate chain and key (NULL: a throw-away one) */
    const char *ca_file;    /* a peer's certificate must chain to these (NULL: not checked) */
} peer_tls_t;

int peer_start(uv_loop_t *loop, const char *listen, const char *self, const uint8_t *key, size_t key_len,
               const peer_tls_t *tls, peer_message_cb cb, void *cb_data, peer_t **out, char *err, size_t errlen);
/* Queues msg (packed now; msg may be freed after the call) for the node name at addr
 * (host:port). Returns 0, -EINVAL or -ENOBUFS (the destination's queue is full: dropped). */
int peer_send(peer_t *p, const char *name, const char *addr, const Llmrelay__PeerMessage *msg);
/* The port the listener is bound to (0 without one). */
int peer_port(const peer_t *p);
void peer_get_stats(const peer_t *p, peer_stats_t *out);
/* NULL is ignored. */
void peer_stop(peer_t *p);

#endif
