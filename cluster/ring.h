/* ring: which cluster member owns an API key id (and which one backs it up).
 *
 * Rendezvous (highest-random-weight) hashing: every member m gets a score for a key k,
 * score(m, k), and the members ranked by descending score are the key's placement: the
 * first is the owner, the second the backup, and so on. When a member leaves, only the
 * keys it ranked first on move (to their backup, which ranked second); when one joins, only
 * the keys it now ranks first on move (to it). Nothing else changes, and the load is as
 * even as the hash is good.
 *
 * Hash (fixed forever: every node must compute the same owner, across versions too; a
 * change here reassigns every key in a mixed-version cluster, so it needs a new ring
 * version, not an edit):
 *   h_member = SipHash-2-4(K_member, member name bytes)
 *   h_key    = SipHash-2-4(K_key,    key id bytes)
 *   score    = SipHash-2-4(K_score,  le64(h_member) || le64(h_key))
 * with the 16-byte keys K_member = "llmrelay/ring/m1", K_key = "llmrelay/ring/k1",
 * K_score = "llmrelay/ring/s1" (ASCII). No per-process seed: the keys are constants, the
 * input is read as little-endian bytes, so the result is the same on every host. The
 * SipHash state after h_member's block is precomputed per member, so a lookup costs one
 * hash of the key id plus N short SipHash finishes (see ring_owner for figures).
 * Ties (equal 64-bit scores; practically never) go to the member whose name sorts first
 * (bytewise), so the ranking is a total order that does not depend on the order the
 * members were given in.
 *
 * Identity of a member is its name (the SWIM member name). Indexes returned by lookups are
 * positions in the names array given to ring_create, so the caller maps them back to its
 * own member table; ring_member_name gives the name too.
 *
 * Ownership and threads: ring_create copies the names; the ring is immutable once built
 * (rebuild it on every membership change; building is O(N) hashes, cheap for N <= 1000),
 * so lookups on one ring may run concurrently from any threads. ring_destroy frees it.
 * Pure code: no I/O, no clock, no global state.
 */
#ifndef LLMRELAY_CLUSTER_RING_H
#define LLMRELAY_CLUSTER_RING_H

#include <stddef.h>
#include <stdint.h>

/* Bounds: ring_create refuses more members (-E2BIG) or longer names (-EINVAL). */
#define RING_MAX_MEMBERS 4096
#define RING_NAME_MAX 255

typedef struct ring ring_t;

/* Builds a ring of n members (n may be 0: every lookup then finds no owner). names[i] is
 * a NUL-terminated, non-empty name of at most RING_NAME_MAX bytes; names must be distinct.
 * Returns 0 and *out, or -EINVAL (NULL/empty/too long/duplicate name, or NULL out), -E2BIG
 * (n > RING_MAX_MEMBERS), -ENOMEM. The names are copied. */
int ring_create(const char *const *names, size_t n, ring_t **out);
/* NULL is fine. */
void ring_destroy(ring_t *ring);

/* Number of members. */
size_t ring_size(const ring_t *ring);
/* Name of the member at index (as given to ring_create), NULL if index >= size. Valid
 * while the ring lives. */
const char *ring_member_name(const ring_t *ring, size_t index);
/* Index of the member named name, or -ENOENT. O(N). */
int ring_find(const ring_t *ring, const char *name);

/* h_key of a key id (see above). Lets a caller hash a key once and look it up on several
 * rings (e.g. the old and the new one during a membership change). */
uint64_t ring_key_hash(const void *key_id, size_t key_len);

/* The owner of a key id: a member index, or -ENOENT if the ring is empty. key_id may be
 * NULL when key_len is 0. One key hash + N score finishes: ~10 ns per member. */
int ring_owner(const ring_t *ring, const void *key_id, size_t key_len);
int ring_owner_hashed(const ring_t *ring, uint64_t key_hash);

/* The first k members of the key's ranking, best first (out[0] the owner, out[1] the
 * backup, ...), written to out[0..]. Returns how many were written: min(k, size). O(N*k)
 * in the worst case, O(N) for small k. */
size_t ring_rank(const ring_t *ring, const void *key_id, size_t key_len, int *out, size_t k);
size_t ring_rank_hashed(const ring_t *ring, uint64_t key_hash, int *out, size_t k);

/* SipHash-2-4 with a 16-byte key, 64-bit output (Aumasson and Bernstein, "SipHash: a fast
 * short-input PRF", 2012). Exposed for the test vectors of that specification. */
uint64_t ring_siphash24(const uint8_t key[16], const void *data, size_t len);

#endif
