/* swim: cluster membership as a pure SWIM state machine (no I/O, no clock, no globals).
 *
 * One swim_t per node. The caller feeds it events - swim_tick (timers), swim_on_message (a
 * datagram received), swim_join, swim_leave, swim_pushpull_merge - with the current time in
 * milliseconds, and drains two outputs: datagrams to send (swim_pop_datagram) and events
 * (swim_pop_event: a member became alive/suspect/dead/left, or "run a push-pull with this
 * member now"). Randomness comes from a PRNG seeded at creation, so given the seed and the
 * inputs the outputs are identical: it runs unchanged in a simulation with a fake network.
 *
 * Protocol (SWIM + Lifeguard, as in hashicorp/memberlist):
 *   - Every probe interval the node pings the next member of a shuffled round-robin order
 *     (reshuffled each round; a new member goes to a random place in the rest of the current
 *     round, and reclaiming dead members keeps the round going rather than restarting it, so
 *     every member is probed by every node once per round).
 *     No ack within the probe timeout: it asks indirect_k other members to ping the target
 *     (ping-req); they answer with the target's ack, or a nack when the target stayed
 *     silent; and it pings the target once more itself (no piggybacked updates; the UDP
 *     analogue of memberlist's TCP fallback ping: under uniform loss a single lost ping or
 *     ack caused most false suspicions). A relay likewise pings the target a second time
 *     when no ack came by half its nack time. No ack by the end of the probe period: the
 *     target becomes suspect.
 *   - Suspicion: a suspect member that does not refute before its suspicion timeout is
 *     declared dead. The timeout starts at max_mult * min and shrinks towards
 *     min = max(suspicion_min_ms, suspicion_mult * max(1, log10 N) * probe_interval) as
 *     independent confirmations (other members suspecting the same incarnation) arrive
 *     (Lifeguard); suspicion_mult - 2 confirmations are expected, none in a cluster of fewer
 *     than suspicion_mult members. The floor in ms keeps small clusters, where log10 N is
 *     small, from declaring a member dead during a pause of a few seconds (GC, VM).
 *   - Incarnation numbers: a node that hears itself suspected or declared dead bumps its
 *     incarnation and gossips alive; higher incarnations win, at equal incarnation
 *     suspect beats alive and dead/left beat suspect. A stale accusation (an incarnation
 *     already refuted) requeues the refutation only once it is no longer queued, so the
 *     echoes of one suspicion do not keep restarting its retransmissions.
 *   - Local health (Lifeguard): a score 0..health_max-1; probe interval and timeout are
 *     multiplied by score + 1, and so are the suspicion timeouts this node runs (an extension:
 *     its accusations may not have got out). Missed nacks, failed probes and refutations
 *     raise it, acks lower it: a slow node widens its own timeouts instead of accusing
 *     healthy members.
 *   - Updates (alive/suspect/dead/leave) are piggybacked on every datagram and also sent to
 *     gossip_nodes random members every gossip interval; each is sent
 *     retransmit_mult * ceil(log2(N + 1)) times, least-sent first, newer first, a newer
 *     update about a member replacing the older one. News that races a timer - a dead or
 *     leave verdict, a refutation (our own, or a suspect we hear is alive) - brings the next
 *     gossip round forward to the next tick with 3 x gossip_nodes targets (at most one such
 *     round per quarter gossip interval), so it spreads in tens of ms instead of waiting up to
 *     a gossip interval at every hop.
 *   - Push-pull: every pushpull_interval the node emits SWIM_EVENT_PUSHPULL naming a random
 *     member; the caller then exchanges swim_pushpull_state over TCP and merges the
 *     other side's with swim_pushpull_merge (remote dead is taken as suspect). A joining
 *     node should do one push-pull with a seed right after swim_join.
 *   - Leave: swim_leave gossips a leave update (seen as LEFT, not DEAD) and stops probing;
 *     the caller keeps ticking for a moment so it gets out.
 *
 * Wire format (plaintext; the network layer seals packets): byte 0 version (1), byte 1
 * message type, the type's fields, then a count byte and that many updates. Integers are
 * big-endian, strings are a length byte + bytes. Decoding is bounds-checked; a malformed
 * datagram is dropped whole, an unknown type or version is ignored.
 *
 * Ownership: swim_create returns an object owned by the caller, freed with swim_destroy.
 * Every pointer argument is borrowed for the call. Not thread-safe. */
#ifndef LLMRELAY_CLUSTER_SWIM_H
#define LLMRELAY_CLUSTER_SWIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SWIM_NAME_MAX 64 /* bytes incl. NUL, for every string of a record */
#define SWIM_DATAGRAM_MAX 1400u
#define SWIM_WIRE_VERSION 1u

typedef enum swim_status {
    SWIM_ALIVE = 0,
    SWIM_SUSPECT = 1,
    SWIM_DEAD = 2,
    SWIM_LEFT = 3,
} swim_status_t;

typedef struct swim_record {
    char name[SWIM_NAME_MAX]; /* unique in the cluster, non-empty */
    char region[SWIM_NAME_MAX];
    char gossip_addr[SWIM_NAME_MAX]; /* where datagrams for this member go */
    char peer_addr[SWIM_NAME_MAX];   /* peer RPC / push-pull address */
    char version[SWIM_NAME_MAX];     /* software version */
} swim_record_t;

typedef struct swim_member_info {
    swim_record_t rec;
    swim_status_t status;
    uint32_t incarnation;
} swim_member_info_t;

typedef struct swim_config {
    uint32_t probe_interval_ms;    /* 150 */
    uint32_t probe_timeout_ms;     /* direct ack wait before ping-req, 75 */
    uint32_t indirect_k;           /* ping-req fan-out, 3 */
    uint32_t suspicion_mult;       /* min suspicion = mult * max(1, log10 N) * interval, 11 */
    uint32_t suspicion_max_mult;   /* max suspicion = max_mult * min, 6 */
    uint32_t suspicion_min_ms;     /* floor of min suspicion (outlasts a pause at small N), 3450 */
    uint32_t retransmit_mult;      /* lambda, 4 */
    uint32_t gossip_interval_ms;   /* 200; 0 = piggyback only */
    uint32_t gossip_nodes;         /* 3 */
    uint32_t pushpull_interval_ms; /* 30000; 0 = never */
    uint32_t health_max;           /* local health multiplier max, 8 */
    uint32_t dead_reclaim_ms;      /* forget dead/left members after, 30000 */
    uint32_t max_members;          /* bound, 4096 */
    uint32_t max_datagram;         /* <= SWIM_DATAGRAM_MAX, 1400 */
} swim_config_t;

void swim_config_default(swim_config_t *cfg);

typedef enum swim_event_kind {
    SWIM_EVENT_ALIVE = 1, /* joined, or came back / refuted (member.status ALIVE) */
    SWIM_EVENT_SUSPECT = 2,
    SWIM_EVENT_DEAD = 3,
    SWIM_EVENT_LEFT = 4,
    SWIM_EVENT_UPDATE = 5,   /* alive member's record changed (address, version) */
    SWIM_EVENT_PUSHPULL = 6, /* caller: run a push-pull with member.rec.gossip_addr now (TCP) */
} swim_event_kind_t;

typedef struct swim_event {
    swim_event_kind_t kind;
    swim_member_info_t member;
} swim_event_t;

typedef struct swim_datagram {
    char to[SWIM_NAME_MAX];
    size_t len;
    uint8_t data[SWIM_DATAGRAM_MAX];
} swim_datagram_t;

typedef struct swim swim_t;

/* NULL on an invalid config or record (empty name, over-long strings) or out of memory. */
swim_t *swim_create(const swim_config_t *cfg, const swim_record_t *self, uint64_t seed, uint64_t now_ms);
void swim_destroy(swim_t *s);

/* Timers: probes, indirect probes, suspicion timeouts, gossip, push-pull, reclaim. */
void swim_tick(swim_t *s, uint64_t now_ms);
/* A datagram from from_addr; malformed or foreign input is ignored. */
void swim_on_message(swim_t *s, uint64_t now_ms, const char *from_addr, const uint8_t *bytes, size_t len);
/* Announces this node to the seeds (gossip addresses, at most 64 used), and again every
 * probe interval until another member is known. -EINVAL if an address is too long. Every
 * member that learns of a new member by gossip sends it its own alive record once, so the
 * joiner learns the cluster even without a push-pull (which the caller should still run). */
int swim_join(swim_t *s, uint64_t now_ms, const char *const *seeds, size_t n_seeds);
/* Gossips a leave and stops probing; keep ticking a few gossip intervals to spread it. */
int swim_leave(swim_t *s, uint64_t now_ms);

/* Full state for a push-pull. Returns the length written, or -ENOSPC if cap is too small
 * (swim_pushpull_size tells the size needed). */
size_t swim_pushpull_size(const swim_t *s);
long swim_pushpull_state(const swim_t *s, uint8_t *out, size_t cap);
/* Merges a peer's state; -EBADMSG (and nothing applied) if malformed. */
int swim_pushpull_merge(swim_t *s, uint64_t now_ms, const uint8_t *bytes, size_t len);

/* Outputs, in order. Return false when empty. */
bool swim_pop_datagram(swim_t *s, swim_datagram_t *out);
bool swim_pop_event(swim_t *s, swim_event_t *out);

/* Introspection. Members include this node itself. */
size_t swim_member_count(const swim_t *s);
bool swim_member_at(const swim_t *s, size_t i, swim_member_info_t *out);
bool swim_member_find(const swim_t *s, const char *name, swim_member_info_t *out);
size_t swim_alive_count(const swim_t *s);         /* alive + suspect, self included */
uint32_t swim_health_multiplier(const swim_t *s); /* 1 .. health_max */
uint32_t swim_incarnation(const swim_t *s);
/* Updates currently queued for piggybacking, and the retransmit limit for them. */
size_t swim_broadcast_count(const swim_t *s);
uint32_t swim_retransmit_limit(const swim_t *s);

#endif
