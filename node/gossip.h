/* gossip.h — SWIM cluster membership on the node's main uv loop: the I/O glue around the
 * pure state machine of cluster/swim.h.
 *
 * One UDP socket bound to --gossip; a 20 ms timer ticks swim and drains its outputs. Every
 * datagram swim emits is sealed with cluster/gossip_seal.h under the cluster key
 * (--cluster-key-file) and sent to the member's gossip address; every datagram received is
 * opened first and dropped (counted by gossip_seal) when it is malformed, forged (another
 * key, tampered, random bytes), replayed or too old. Membership events are logged; the
 * member table is swim's (gossip_cluster reads it for the admin API).
 *
 * This node's record: --name, --region, the gossip address (--advertise, with the --gossip
 * port when it names no port; else the bound address), --peer-listen, LLMRELAY_VERSION.
 * --join seeds are announced to at start (swim retries every probe interval until another
 * member is known). Push-pull over TCP is not run yet (SWIM_EVENT_PUSHPULL is ignored):
 * joiners learn the cluster from gossip alone.
 *
 * Leave: gossip_leave announces a graceful leave (members see "left", not "dead") and keeps
 * the socket open while the leave update is retransmitted (bounded: GOSSIP_LEAVE_MAX_MS);
 * gossip_leave_done tells when that is over, so the node can run its loop until then.
 *
 * Ownership: gossip_start borrows loop and cfg (read during the call); the key is copied
 * (and the caller wipes its own copy). gossip_stop closes the handles; the gossip_t frees
 * itself from the last close callback (the loop must run afterwards). Not thread-safe: main
 * loop only. */
#ifndef LLMRELAY_NODE_GOSSIP_H
#define LLMRELAY_NODE_GOSSIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "node/admin.h"
#include "node/config.h"

#define GOSSIP_TICK_MS 20
/* How long a leaving node keeps gossiping its leave at most. */
#define GOSSIP_LEAVE_MAX_MS 2000

typedef struct gossip gossip_t;

/* Binds cfg->gossip and starts membership (joining cfg->join if given). key is the
 * 32-byte cluster key. Returns 0 with *out set, or a negative errno-style error with a
 * one-line message in err. */
int gossip_start(uv_loop_t *loop, const llmrelay_config_t *cfg, const uint8_t *key, size_t key_len, gossip_t **out,
                 char *err, size_t errlen);

/* Announces a graceful leave (idempotent). */
void gossip_leave(gossip_t *g);
/* True once the leave has been gossiped (or GOSSIP_LEAVE_MAX_MS has passed since
 * gossip_leave), or when no leave was asked for. */
bool gossip_leave_done(const gossip_t *g);

/* Closes the socket and timer; frees g once closed. NULL is ignored. */
void gossip_stop(gossip_t *g);

/* The admin API's view: every member swim knows (this node included) with its status and
 * the number of key_ids it owns on the rendezvous ring of the alive and suspect members
 * (0 for dead and left members), plus the gossip_seal packet counts. out->members is
 * malloc'd (the caller frees it). Returns 0 or -ENOMEM. */
int gossip_cluster(gossip_t *g, const char *const *key_ids, size_t n_keys, admin_cluster_t *out);

#endif
