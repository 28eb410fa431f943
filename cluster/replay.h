/* replay: a bounded table of senders, each with a sliding replay window over a 64-bit
 * counter. Shared by gossip_seal (keyed by sender_id, boot_id) and peer_frame (keyed by
 * boot_id, 0).
 *
 * The table is a fixed array of capacity entries, a chained hash index over the key (a, b)
 * and an LRU list, all linked by 32-bit indices; nothing is allocated after create. When
 * the table is full, creating an entry drops the least recently used one ("evicted").
 *
 * Each entry's window is the highest counter accepted (top) and RFC 6479's ring bitmap of
 * window_bits + 64 bits: bit (c mod ring bits) for counter c; when top moves up, the words
 * of the 64-counter blocks it passes are cleared, so the window_bits counters below top
 * (top - window_bits < c <= top) are always exact and advancing costs at most ring words
 * writes, never a shift of the whole bitmap. A counter above top is new; one at or below
 * top - window_bits is too old.
 *
 * Each entry also has user_size bytes of caller data (8-byte aligned, zero when the entry
 * is created) and a last-seen time (replay_touch). Entries are wiped (explicit_bzero) when
 * dropped and at free, so the user data may hold key material.
 *
 * Pure code: no I/O, no clock (times are arguments), no global state. Not thread-safe: one
 * table per owner. Entry pointers stay valid until the entry is dropped (evicted by a
 * replay_get of another key, expired, or the table freed).
 */
#ifndef LLMRELAY_CLUSTER_REPLAY_H
#define LLMRELAY_CLUSTER_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define REPLAY_MAX_CAPACITY ((uint32_t)1 << 20)
#define REPLAY_MAX_WINDOW_BITS 65536u
#define REPLAY_MAX_USER_SIZE 4096u

typedef struct replay replay_t;
typedef struct replay_entry replay_entry_t;

typedef enum replay_verdict {
    REPLAY_OK = 0,   /* counter not seen and within (or above) the window */
    REPLAY_REPLAYED, /* counter already accepted */
    REPLAY_TOO_OLD,  /* counter at or below top - window_bits: cannot tell, refuse */
} replay_verdict_t;

typedef struct replay_stats {
    uint64_t evicted; /* entries dropped by replay_get because the table was full */
    uint64_t expired; /* entries dropped by replay_expire / replay_expire_scan */
    uint32_t entries; /* entries held now (a gauge) */
} replay_stats_t;

/* Creates a table of capacity entries (1..REPLAY_MAX_CAPACITY), windows of window_bits
 * counters (a multiple of 64, 64..REPLAY_MAX_WINDOW_BITS) and user_size bytes of user data
 * per entry (at most REPLAY_MAX_USER_SIZE). Returns 0 and *out (free with replay_free),
 * -EINVAL or -ENOMEM. */
int replay_create(uint32_t capacity, uint32_t window_bits, size_t user_size, replay_t **out);
void replay_free(replay_t *t);

/* The entry for (a, b), or NULL. Changes nothing (not even the LRU order). */
replay_entry_t *replay_find(const replay_t *t, uint64_t a, uint64_t b);

/* Lookup-or-create: the entry for (a, b), moved to the head of the LRU list. If absent it is
 * created (empty window, top 0, last-seen 0, user data zeroed; *created set to true), first
 * evicting the least recently used entry if the table is full. created may be NULL. */
replay_entry_t *replay_get(replay_t *t, uint64_t a, uint64_t b, bool *created);

/* The entry the next replay_get of an absent key would evict (the LRU tail when the table
 * is full), or NULL if there is room. Changes nothing. */
const replay_entry_t *replay_victim(const replay_t *t);

/* Whether counter may be accepted from e. Changes nothing: call before authenticating. */
replay_verdict_t replay_check(const replay_t *t, const replay_entry_t *e, uint64_t counter);

/* Records counter as accepted (after authentication; replay_check must have said OK). */
void replay_accept(replay_t *t, replay_entry_t *e, uint64_t counter);

/* Sets e's last-seen time to now_ms and moves e to the head of the LRU list. */
void replay_touch(replay_t *t, replay_entry_t *e, uint64_t now_ms);

/* Drops entries last seen before now_ms - idle_ms (none if now_ms < idle_ms), walking from
 * the LRU tail and stopping at the first entry still fresh: exact when touch times only go
 * up, and costs in proportion to the number dropped. Returns how many were dropped. */
size_t replay_expire(replay_t *t, uint64_t now_ms, uint64_t idle_ms);

/* As replay_expire, but scans the whole table: for callers whose last-seen times are not
 * in LRU order (e.g. a sender's own clock). Costs O(entries held). */
size_t replay_expire_scan(replay_t *t, uint64_t now_ms, uint64_t idle_ms);

void *replay_data(replay_entry_t *e);
uint64_t replay_key_a(const replay_entry_t *e);
uint64_t replay_key_b(const replay_entry_t *e);
uint64_t replay_top(const replay_entry_t *e);
uint64_t replay_last_ms(const replay_entry_t *e);
void replay_get_stats(const replay_t *t, replay_stats_t *out);

#endif
