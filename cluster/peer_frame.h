/* peer_frame: framing and authentication of one peer RPC body (a serialized PeerEnvelope,
 * proto/peer.proto) for HTTP/2 between nodes: HMAC-SHA256 under a key derived from the
 * cluster key (libcurl has no TLS-PSK, so this is what authenticates a peer; TLS, when peer
 * certificates are configured, adds confidentiality on top). The payload is not encrypted:
 * peer messages carry ids, counts and amounts, never content.
 *
 * Wire format of one frame (integers big-endian):
 *
 *   offset  size  field
 *   0       4     magic          "LRPF"
 *   4       1     frame version  PEER_FRAME_VERSION = 1
 *   5       3     reserved       zero (a frame with another value is malformed)
 *   8       8     key id         first 8 bytes of SHA-256(mac key): tells a peer running
 *                                with another cluster key apart from a forger
 *   16      8     boot id        the sender's incarnation, random per start
 *   24      8     sent_ms        sender's clock at sealing (unix ms)
 *   32      8     seq            per boot id frame counter, 1, 2, 3... never reused
 *   40      4     payload length n, 0 <= n <= PEER_FRAME_MAX_PAYLOAD (4 MiB)
 *   44      n     payload        the serialized PeerEnvelope
 *   44+n    32    HMAC-SHA256(mac key, bytes 0 .. 44+n)
 *
 * mac key = HKDF-SHA256(salt empty, IKM = the 32-byte cluster key, info = PEER_FRAME_LABEL,
 * 32 bytes). The label keeps it apart from the gossip keys derived from the same file.
 * A body is exactly one frame: its length must be 76 + n.
 *
 * Checks in open, in this order, each counted under its own reason: magic (bad_magic; a
 * body shorter than a frame is malformed unless its first 4 bytes already differ), frame
 * version, reserved bytes (malformed), payload length (too_large, then malformed if the
 * body is not exactly one frame), key id, HMAC (constant-time compare), sent_ms within
 * +-time_window_ms of the receiver's now_ms (time_skew), then replay: per boot id the highest
 * seq accepted and a bitmap of the PEER_FRAME_WINDOW seqs below it; a seq seen before is
 * "replayed", one further below is "too_old". Replay state is only created or changed by a
 * frame whose HMAC verified, so forged traffic cannot touch it.
 *
 * Why time and seq both: the seq window stops replays while a sender's entry is held; the
 * time window bounds how long a frame can be replayed at all. An entry whose newest accepted
 * sent_ms is more than time_window_ms before now can be dropped without losing anything
 * (every frame it could block is refused by time): such drops are "expired". The table is
 * bounded (max_senders, LRU); evicting an entry that is still within the time window
 * ("evicted") would let that sender's last frames be replayed until they age out, so size
 * max_senders well above the number of incarnations that send within one time window.
 *
 * The sender shares one seq across all destinations, so a receiver sees gaps (fine) and,
 * with concurrent streams, reordering: a frame overtaken by more than PEER_FRAME_WINDOW
 * later frames of the same sender is refused as too_old. Retries must re-seal (new seq and
 * sent_ms), never resend a frame; then such a refusal costs one retry.
 *
 * Pure code over OpenSSL: no I/O, no clock (now_ms is passed in), no randomness (boot_id is
 * passed in), no globals. Not thread-safe: one peer_frame_t per thread.
 *
 * Ownership: peer_frame_t belongs to the caller of peer_frame_create; peer_frame_free wipes
 * the key and frees it. The cluster key is only read during create. Every other buffer is
 * the caller's and only used during the call; peer_frame_info_t.payload points into the
 * frame passed to open.
 */
#ifndef LLMRELAY_CLUSTER_PEER_FRAME_H
#define LLMRELAY_CLUSTER_PEER_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Revision of proto/peer.proto this build speaks (PeerEnvelope.version_*). */
#define PEER_PROTO_VERSION_MAJOR 1u
#define PEER_PROTO_VERSION_MINOR 0u

#define PEER_FRAME_MAGIC "LRPF"
#define PEER_FRAME_VERSION 1
#define PEER_FRAME_KEY_LEN 32
#define PEER_FRAME_KEY_ID_LEN 8
#define PEER_FRAME_HEADER_LEN 44
#define PEER_FRAME_MAC_LEN 32
#define PEER_FRAME_OVERHEAD (PEER_FRAME_HEADER_LEN + PEER_FRAME_MAC_LEN)
#define PEER_FRAME_MAX_PAYLOAD ((size_t)4 << 20)
/* The largest body a peer server should read before giving up on it. */
#define PEER_FRAME_MAX_FRAME (PEER_FRAME_MAX_PAYLOAD + PEER_FRAME_OVERHEAD)
/* Seqs accepted out of order below the highest one seen from a sender. */
#define PEER_FRAME_WINDOW 960
#define PEER_FRAME_DEFAULT_TIME_WINDOW_MS 30000u
#define PEER_FRAME_DEFAULT_MAX_SENDERS 1024u
/* The HKDF info; the same key file keys gossip under another label. */
#define PEER_FRAME_LABEL "llmrelay peer v1"

typedef struct peer_frame peer_frame_t;

/* Why open refused a frame (PEER_FRAME_OK: accepted). */
typedef enum peer_frame_reason {
    PEER_FRAME_OK = 0,
    PEER_FRAME_MALFORMED,   /* too short, reserved bytes set, length field != body length */
    PEER_FRAME_BAD_MAGIC,   /* not a peer frame at all */
    PEER_FRAME_BAD_VERSION, /* another frame format version */
    PEER_FRAME_TOO_LARGE,   /* payload length above PEER_FRAME_MAX_PAYLOAD */
    PEER_FRAME_WRONG_KEY,   /* key id differs: the sender uses another cluster key */
    PEER_FRAME_FORGED,      /* HMAC did not verify: tampered or forged */
    PEER_FRAME_TIME_SKEW,   /* sent_ms outside +-time_window_ms of now */
    PEER_FRAME_REPLAYED,    /* seq already accepted from this boot id */
    PEER_FRAME_TOO_OLD,     /* seq below this boot id's replay window */
    PEER_FRAME_REASON_COUNT
} peer_frame_reason_t;

typedef struct peer_frame_config {
    uint32_t time_window_ms; /* 0: PEER_FRAME_DEFAULT_TIME_WINDOW_MS */
    uint32_t max_senders;    /* replay table bound, 0: PEER_FRAME_DEFAULT_MAX_SENDERS; at most 1<<20 */
} peer_frame_config_t;

typedef struct peer_frame_stats {
    uint64_t sealed;
    uint64_t opened;
    uint64_t refused[PEER_FRAME_REASON_COUNT]; /* by reason; [PEER_FRAME_OK] stays 0 */
    uint64_t evicted;                          /* entries dropped by LRU while within the time window */
    uint64_t expired;                          /* entries dropped once older than the time window */
    uint64_t senders;                          /* entries held now (a gauge) */
} peer_frame_stats_t;

/* What open tells about an accepted frame. payload points into the frame buffer. */
typedef struct peer_frame_info {
    uint64_t boot_id;
    uint64_t sent_ms;
    uint64_t seq;
    const uint8_t *payload;
    size_t payload_len;
} peer_frame_info_t;

/* Creates a context from the 32-byte cluster key. boot_id identifies this incarnation as a
 * sender: draw it at random at every start, never reuse it. cfg NULL = defaults. Returns 0,
 * -EINVAL (key_len != 32, max_senders too large), -ENOMEM or -EIO (OpenSSL failure). */
int peer_frame_create(const uint8_t *cluster_key, size_t key_len, uint64_t boot_id, const peer_frame_config_t *cfg,
                      peer_frame_t **out);
/* Wipes the key material and frees ctx. NULL is a no-op. */
void peer_frame_free(peer_frame_t *ctx);

/* Seals payload[0..len) as the next frame of this incarnation into out[0..*out_len), stamped
 * now_ms. out_cap must be >= len + PEER_FRAME_OVERHEAD. payload may already sit at
 * out + PEER_FRAME_HEADER_LEN (pack the envelope there to avoid a copy); otherwise it must not
 * overlap out. Returns 0, -EINVAL, -EMSGSIZE (len > PEER_FRAME_MAX_PAYLOAD), -ENOBUFS
 * (out_cap too small), -EOVERFLOW (seq exhausted) or -EIO. */
int peer_frame_seal(peer_frame_t *ctx, uint64_t now_ms, const uint8_t *payload, size_t len, uint8_t *out,
                    size_t out_cap, size_t *out_len);

/* Verifies frame[0..len) (one whole HTTP body) received at now_ms. On 0 fills *info (may be
 * NULL) and counts it in opened. Otherwise *why (may be NULL) tells the reason, counted in
 * stats.refused, and the return is -EPROTO (malformed, bad magic, bad version),
 * -EMSGSIZE (too large), -EKEYREJECTED (wrong key), -EBADMSG (forged), -ETIME (time skew),
 * -EALREADY (replayed) or -ESTALE (too old). Not counted: -EINVAL (bad arguments), -EIO. */
int peer_frame_open(peer_frame_t *ctx, const uint8_t *frame, size_t len, uint64_t now_ms, peer_frame_info_t *info,
                    peer_frame_reason_t *why);

/* Drops replay entries whose newest accepted sent_ms is older than now_ms - time_window_ms
 * (safe: see above). Returns how many. */
size_t peer_frame_expire(peer_frame_t *ctx, uint64_t now_ms);

/* A short stable name of a reason for logs and metric labels ("wrong_key", ...). */
const char *peer_frame_reason_name(peer_frame_reason_t why);

/* The key id this context stamps and expects (8 bytes). */
void peer_frame_key_id(const peer_frame_t *ctx, uint8_t out[PEER_FRAME_KEY_ID_LEN]);
uint64_t peer_frame_boot_id(const peer_frame_t *ctx);
uint64_t peer_frame_seq(const peer_frame_t *ctx); /* last seq sealed, 0: none yet */
void peer_frame_get_stats(const peer_frame_t *ctx, peer_frame_stats_t *out);

/* The version rule of PeerEnvelope: a peer is understood only if it speaks the same major
 * (minors differ freely: unknown fields are skipped); major 0 means the envelope carried no
 * version. Returns true if compatible; otherwise false and, when why != NULL, a log line
 * such as "peer protocol major version 2 is incompatible with this node's 1: refused" in
 * why[0..why_cap) (NUL-terminated, truncated to fit). */
bool peer_version_compatible(uint32_t major_local, uint32_t major_remote, char *why, size_t why_cap);

#endif
