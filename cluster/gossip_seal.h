/* gossip_seal: authenticated encryption of gossip UDP packets (AES-256-GCM) under the
 * cluster key (--cluster-key-file, 32 bytes base64: load it with secrets_key_load and pass
 * the raw bytes here), with replay protection on the receiving side.
 *
 * Wire format of one packet (integers big-endian):
 *
 *   offset  size  field
 *   0       1     version (GOSSIP_SEAL_VERSION = 1)
 *   1       8     sender_id  - the sending member (e.g. a 64-bit hash of its name)
 *   9       8     boot_id    - the sender's incarnation, random per gossip_seal_t
 *   17      8     counter    - per boot_id packet counter, 1, 2, 3... never reused
 *   25      n     ciphertext - n = plaintext length, 0 <= n <= GOSSIP_SEAL_MAX_PLAIN
 *   25+n    16    GCM tag    - covers bytes 0..25 (as AAD) and the ciphertext
 *
 * Keys and nonces: the cluster key is run through HKDF-SHA256 (salt empty, info =
 * "llmrelay gossip v1" || boot_id as 8 bytes big-endian) to a 32-byte key per sender
 * incarnation; the GCM nonce is 4 zero bytes || counter (WireGuard's construction). The
 * label keeps these keys apart from any other use of the same key file. A nonce repeats
 * under one key only if two incarnations draw the same 64-bit boot_id (and both send the
 * same counter): with random boot ids that is a birthday bound of ~n^2/2^65 over all n
 * incarnations ever started with one cluster key. The counter is 64-bit and does not wrap
 * (seal fails with -EOVERFLOW first, at 2^64-1 packets).
 *
 * Replays: the receiver keeps, per (sender_id, boot_id), the highest counter accepted and a
 * bitmap of the GOSSIP_SEAL_WINDOW counters below it. A packet is accepted once; a
 * duplicate is "replayed", a counter more than the window below the highest is "too_old".
 * The table of senders is bounded (max_senders, LRU eviction) and idle entries can be
 * dropped with gossip_seal_expire. An entry is only created or changed by a packet whose
 * tag verified, so forged traffic cannot touch replay state. Forgetting a sender (eviction
 * or expiry) forgets its window: its old packets would open again. Evictions are counted;
 * size max_senders well above the number of live incarnations.
 *
 * Check order in open: length/version (malformed), replay window of a known sender
 * (replayed / too_old, before any crypto: a replay flood costs a table lookup), tag
 * (forged), then the window is updated. So a forged packet reusing an accepted counter
 * of a known sender counts as replayed, not forged.
 *
 * Size: GOSSIP_SEAL_MAX_PLAIN (1400) keeps a packet (1441 bytes) under the UDP payload of a
 * 1500-byte MTU path for IPv4 (1472) and IPv6 (1452), so packets are not fragmented.
 *
 * Pure code over OpenSSL EVP: no I/O, no clock (now_ms is passed in), no globals, no
 * randomness (boot_id is passed in: RAND_bytes in a node, a seeded PRNG in simulation).
 * Not thread-safe: one gossip_seal_t per loop thread.
 *
 * Ownership:
 * - gossip_seal_t is owned by the caller of gossip_seal_create; gossip_seal_free wipes its
 *   keys (the cluster-derived key and every per-sender key) and frees it.
 * - cluster_key is copied (as derived material) during create; the caller keeps and wipes
 *   its own copy.
 * - All other buffers are the caller's; they are only read or written during the call.
 *   Plaintext output is written only when open returns 0 (on failure, out is wiped).
 */
#ifndef LLMRELAY_CLUSTER_GOSSIP_SEAL_H
#define LLMRELAY_CLUSTER_GOSSIP_SEAL_H

#include <stddef.h>
#include <stdint.h>

#define GOSSIP_SEAL_VERSION 1
#define GOSSIP_SEAL_KEY_LEN 32
#define GOSSIP_SEAL_HEADER_LEN 25
#define GOSSIP_SEAL_TAG_LEN 16
#define GOSSIP_SEAL_OVERHEAD (GOSSIP_SEAL_HEADER_LEN + GOSSIP_SEAL_TAG_LEN)
#define GOSSIP_SEAL_MAX_PLAIN 1400
#define GOSSIP_SEAL_MAX_PACKET (GOSSIP_SEAL_MAX_PLAIN + GOSSIP_SEAL_OVERHEAD)
/* Counters accepted out of order below the highest one seen from a sender. */
#define GOSSIP_SEAL_WINDOW 128
#define GOSSIP_SEAL_DEFAULT_MAX_SENDERS 4096
/* The HKDF info prefix; the same key file can key other uses under other labels. */
#define GOSSIP_SEAL_LABEL "llmrelay gossip v1"

typedef struct gossip_seal gossip_seal_t;

/* Counts since create. Drops are packets open refused; the node exports them as metrics. */
typedef struct gossip_seal_stats {
    uint64_t sealed;    /* packets sealed */
    uint64_t opened;    /* packets accepted by open */
    uint64_t malformed; /* wrong version, too short, too long */
    uint64_t forged;    /* tag did not verify: forged, tampered, or another cluster key */
    uint64_t replayed;  /* counter already accepted from this sender */
    uint64_t too_old;   /* counter below the replay window of this sender */
    uint64_t evicted;   /* sender entries dropped by LRU because the table was full */
    uint64_t expired;   /* sender entries dropped by gossip_seal_expire */
    uint64_t senders;   /* sender entries currently held (a gauge, not a count) */
} gossip_seal_stats_t;

/* Creates a context from the 32-byte cluster key. boot_id identifies this incarnation as a
 * sender: draw it at random (RAND_bytes) at every start, never reuse it. max_senders bounds
 * the replay table (0: GOSSIP_SEAL_DEFAULT_MAX_SENDERS; at most 1<<20). Returns 0, -EINVAL
 * (key_len != 32, max_senders too large), -ENOMEM or -EIO (OpenSSL failure). */
int gossip_seal_create(const uint8_t *cluster_key, size_t key_len, uint64_t boot_id, size_t max_senders,
                       gossip_seal_t **out);
/* Wipes all key material and frees ctx. NULL is a no-op. */
void gossip_seal_free(gossip_seal_t *ctx);

/* Seals plain[0..len) as the next packet of this incarnation into out[0..*out_len).
 * out_cap must be >= len + GOSSIP_SEAL_OVERHEAD (GOSSIP_SEAL_MAX_PACKET always fits).
 * Returns 0, -EINVAL (bad arguments), -EMSGSIZE (len > GOSSIP_SEAL_MAX_PLAIN), -ENOBUFS
 * (out_cap too small), -EOVERFLOW (counter exhausted: create a new context) or -EIO. */
int gossip_seal_seal(gossip_seal_t *ctx, uint64_t sender_id, const uint8_t *plain, size_t len, uint8_t *out,
                     size_t out_cap, size_t *out_len);

/* Verifies packet[0..len) and writes its plaintext to out[0..*out_len) and its sender to
 * *sender_id (may be NULL). out_cap must be >= len - GOSSIP_SEAL_OVERHEAD
 * (GOSSIP_SEAL_MAX_PLAIN always fits; out may be NULL for an empty payload); out must not
 * overlap packet. now_ms stamps the sender's entry for expiry.
 * Returns 0 (accepted, counted in opened) or a drop, each counted in its stats field:
 * -EPROTO (malformed), -EBADMSG (forged), -EALREADY (replayed), -ESTALE (too_old).
 * Not counted: -EINVAL (bad arguments), -ENOBUFS (out_cap too small), -EIO (OpenSSL). */
int gossip_seal_open(gossip_seal_t *ctx, const uint8_t *packet, size_t len, uint64_t now_ms, uint8_t *out,
                     size_t out_cap, size_t *out_len, uint64_t *sender_id);

/* Drops sender entries last accepted before now_ms - idle_ms (their windows are forgotten,
 * see above). Returns how many were dropped. Cost: proportional to the number dropped. */
size_t gossip_seal_expire(gossip_seal_t *ctx, uint64_t now_ms, uint64_t idle_ms);

/* This context's boot_id and the counter of the last packet sealed (0: none yet). */
uint64_t gossip_seal_boot_id(const gossip_seal_t *ctx);
uint64_t gossip_seal_counter(const gossip_seal_t *ctx);

void gossip_seal_get_stats(const gossip_seal_t *ctx, gossip_seal_stats_t *out);

#endif
