/* pushpull_seal: authenticated encryption of a gossip push-pull exchange over TCP
 * (AES-256-GCM), keyed per connection from the cluster key so that a recorded stream cannot
 * be replayed. Owned by the gossip module (node/gossip.c runs the connections).
 *
 * One exchange, on a fresh TCP connection to a member's gossip address:
 *
 *   server -> client  hello:   "LRPP" | version (1) | server nonce S (16 random bytes)
 *   client -> server           client nonce C (16 random bytes) | frame(direction 1)
 *   server -> client           frame(direction 2)
 *
 * frame: version (1) | be32 n | ciphertext (n bytes) | GCM tag (16); the 5 header bytes are
 * the AAD. Key: HKDF-SHA256(IKM = cluster key, salt empty, info = PUSHPULL_SEAL_LABEL || S
 * || C), 32 bytes, used for the two frames of this connection only; GCM nonce: be32
 * direction || 8 zero bytes. The label keeps this key apart from the UDP packets' keys
 * (gossip_seal.h) derived from the same key file. A stream recorded earlier fails the tag
 * (the other side's fresh nonce changes the key): replays count as forged.
 *
 * Sizes: a frame's plaintext is at most PUSHPULL_MAX_PLAIN (a swim_pushpull_state of 4096
 * members with 63-byte strings fits); the declared length is checked before anything is
 * buffered beyond the header.
 *
 * Pure code over OpenSSL EVP: no I/O, no clock, no globals, no randomness (nonces are
 * passed in). Buffers are the caller's, read or written during the call only; derived
 * keys are the caller's to wipe (pushpull_wipe). */
#ifndef LLMRELAY_CLUSTER_PUSHPULL_SEAL_H
#define LLMRELAY_CLUSTER_PUSHPULL_SEAL_H

#include <stddef.h>
#include <stdint.h>

#define PUSHPULL_SEAL_LABEL "llmrelay pushpull v1"
#define PUSHPULL_VERSION 1
#define PUSHPULL_NONCE_LEN 16
#define PUSHPULL_KEY_LEN 32
#define PUSHPULL_HELLO_LEN (4 + 1 + PUSHPULL_NONCE_LEN)
#define PUSHPULL_HEADER_LEN 5
#define PUSHPULL_TAG_LEN 16
#define PUSHPULL_OVERHEAD (PUSHPULL_HEADER_LEN + PUSHPULL_TAG_LEN)
#define PUSHPULL_MAX_PLAIN (2u << 20)
#define PUSHPULL_DIR_REQUEST 1u
#define PUSHPULL_DIR_REPLY 2u

/* Writes the server's hello for nonce S into out[PUSHPULL_HELLO_LEN]. */
void pushpull_hello(const uint8_t s_nonce[PUSHPULL_NONCE_LEN], uint8_t out[PUSHPULL_HELLO_LEN]);
/* Parses a hello: 0 with S copied out, or -EPROTO. */
int pushpull_hello_parse(const uint8_t in[PUSHPULL_HELLO_LEN], uint8_t s_nonce[PUSHPULL_NONCE_LEN]);

/* Derives the connection key. 0, -EINVAL (key_len != 32) or -EIO. */
int pushpull_derive(const uint8_t *cluster_key, size_t key_len, const uint8_t s_nonce[PUSHPULL_NONCE_LEN],
                    const uint8_t c_nonce[PUSHPULL_NONCE_LEN], uint8_t key[PUSHPULL_KEY_LEN]);

/* The total length of the frame whose first bytes are in[0..have): 0 while fewer than
 * PUSHPULL_HEADER_LEN bytes are there, -EPROTO for another version, -EMSGSIZE when the
 * declared plaintext is over max_plain (<= PUSHPULL_MAX_PLAIN). */
long pushpull_frame_len(const uint8_t *in, size_t have, size_t max_plain);

/* Seals plain[0..len) for direction dir into out (cap >= len + PUSHPULL_OVERHEAD).
 * 0, -EMSGSIZE, -ENOBUFS or -EIO. */
int pushpull_seal(const uint8_t key[PUSHPULL_KEY_LEN], uint32_t dir, const uint8_t *plain, size_t len, uint8_t *out,
                  size_t cap, size_t *out_len);
/* Opens one whole frame (len == pushpull_frame_len) for direction dir into out (cap >= len
 * - PUSHPULL_OVERHEAD). 0, -EPROTO (malformed), -EBADMSG (tag: forged, tampered, replayed,
 * other key or direction), -ENOBUFS or -EIO. out is wiped on failure. */
int pushpull_open(const uint8_t key[PUSHPULL_KEY_LEN], uint32_t dir, const uint8_t *frame, size_t len, uint8_t *out,
                  size_t cap, size_t *out_len);

void pushpull_wipe(void *p, size_t len);

#endif
