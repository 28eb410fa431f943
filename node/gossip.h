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
 * member is known).
 *
 * Push-pull: a TCP listener on the same address as the UDP socket. On SWIM_EVENT_PUSHPULL
 * (every 30 s, a random member), right after joining a seed and every 2 s while this node
 * knows no other member, it connects to a member's gossip address and the two exchange
 * their full swim_pushpull_state, each merged with swim_pushpull_merge. Both messages are
 * sealed per connection (cluster/pushpull_seal.h: AES-256-GCM, key from the cluster key
 * and both sides' fresh nonces), so forged, tampered and replayed streams fail and are
 * dropped and counted (gossip_pushpull_stats, log lines). Bounded: a state of at most
 * PUSHPULL_MAX_PLAIN bytes, a connection lives at most GOSSIP_PP_TIMEOUT_MS (2 s) either
 * side, at most 4 inbound and 3 outbound at once (more inbound ones are closed at once).
 * Never blocks the loop (like UDP sends, only a --join host name is resolved blocking).
 * LLMRELAY_GOSSIP_PUSHPULL_MS (environment, >= 100; a hidden test knob, not a flag)
 * shortens the 30 s interval for the e2e tests.
 *
 * Discovery through etcd (when gossip_start gets a client): <prefix>members/<name> holds a
 * MemberRegistration (proto/members.proto: gossip and peer address, region, version)
 * under a lease of GOSSIP_ETCD_TTL_S, kept alive, registered again if the lease is lost,
 * revoked on gossip_leave. The list is read at start and every 2 s while this node knows
 * no other live member; the others listed are joined as seeds (with a push-pull each), so
 * --join is optional.
 *
 * Leave: gossip_leave announces a graceful leave (members see "left", not "dead") and keeps
 * the socket open while the leave update is retransmitted (bounded: GOSSIP_LEAVE_MAX_MS),
 * and revokes the etcd lease; gossip_leave_done tells when that is over, so the node can
 * run its loop until then.
 *
 * Ownership: gossip_start borrows loop and cfg (read during the call) and etcd (until
 * gossip_stop, which cancels its requests); the key is copied (wiped when g is freed; the
 * caller wipes its own copy). gossip_stop closes the handles; the gossip_t frees
 * itself from the last close callback (the loop must run afterwards). Not thread-safe: main
 * loop only. */
#ifndef LLMRELAY_NODE_GOSSIP_H
#define LLMRELAY_NODE_GOSSIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cluster/etcd.h"
#include "node/admin.h"
#include "node/config.h"

#define GOSSIP_TICK_MS 20
/* How long a leaving node keeps gossiping its leave at most. */
#define GOSSIP_LEAVE_MAX_MS 2000
/* TTL of the etcd lease under members/<name> (kept alive every 3 s). */
#define GOSSIP_ETCD_TTL_S 10

typedef struct gossip gossip_t;

/* Push-pull connections (both sides) since start. Dropped ones are logged (bounded). */
typedef struct gossip_pushpull_stats {
    uint64_t ok;        /* exchanges completed and merged */
    uint64_t malformed; /* bad hello / framing / oversized / bad state: dropped */
    uint64_t forged;    /* tag did not verify: forged, tampered, replayed, another key */
    uint64_t timeouts;  /* not finished within GOSSIP_PP_TIMEOUT_MS */
    uint64_t refused;   /* inbound over the concurrency bound: closed at once */
    uint64_t failed;    /* outbound: connect or I/O error */
} gossip_pushpull_stats_t;

/* Binds cfg->gossip (UDP, and TCP for push-pull) and starts membership (joining cfg->join
 * if given). key is the 32-byte cluster key. etcd (borrowed; may be NULL: no discovery)
 * must outlive the gossip_t until gossip_stop. Returns 0 with *out set, or a negative
 * errno-style error with a one-line message in err. */
int gossip_start(uv_loop_t *loop, const llmrelay_config_t *cfg, const uint8_t *key, size_t key_len, etcd_client_t *etcd,
                 gossip_t **out, char *err, size_t errlen);

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

void gossip_pushpull_stats(const gossip_t *g, gossip_pushpull_stats_t *out);

/* --- membership view --------------------------------------------------------------
 * For code that follows membership (the peer mesh, ownership): a snapshot of every member
 * and a listener for status changes. status holds the values of swim_status_t in
 * cluster/swim.h: SWIM_ALIVE (0), SWIM_SUSPECT (1), SWIM_DEAD (2), SWIM_LEFT (3). */
typedef struct gossip_peer {
    char name[64];      /* member name (--name) */
    char peer_addr[64]; /* its --peer-listen address host:port ("" if none) */
    char region[32];
    int status; /* SWIM status as in cluster/swim.h (alive, suspect, dead, left) */
    bool self;
} gossip_peer_t;
/* Every member known (this node included), any status. Returns how many were written (at most max). */
size_t gossip_view(const gossip_t *g, gossip_peer_t *out, size_t max);
/* Bumped on every change of any member's status or address; 0 never. */
uint64_t gossip_view_version(const gossip_t *g);
/* Called from the main loop after a member's status changed (name, new status). One listener; NULL clears. */
void gossip_set_listener(gossip_t *g, void (*cb)(void *data, const char *name, int status), void *data);
const char *gossip_self_name(const gossip_t *g);

#endif
