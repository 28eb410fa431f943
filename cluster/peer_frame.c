/* peer_frame: HMAC-SHA256 framing of peer RPC bodies with time and per-sender replay checks
 * (see peer_frame.h for the wire format and the checks).
 *
 * How it works: create derives the mac key once (HKDF-SHA256: Extract with an empty salt,
 * one Expand block) and its key id, and keys one EVP_MAC_CTX with it; seal and open are one
 * HMAC each over the contiguous header + payload on that context, re-initialised with the
 * same key (saves about 1 us per frame against the one-shot HMAC(), which fetches and keys
 * a new context every time), and open compares tags with CRYPTO_memcmp.
 *
 * The replay table is cluster/replay (bounded, LRU, nothing allocated after create) keyed
 * by (boot_id, 0), with PEER_FRAME_WINDOW-seq windows (RFC 6479 ring bitmaps of 1024 bits,
 * see replay.h); an entry's last-seen time is the highest sent_ms accepted from it.
 */
#include "cluster/peer_frame.h"
#include "cluster/replay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define LABEL_LEN (sizeof(PEER_FRAME_LABEL) - 1)

_Static_assert(PEER_FRAME_WINDOW % 64 == 0, "replay windows are whole 64-bit words");
_Static_assert(PEER_FRAME_MAX_PAYLOAD <= UINT32_MAX, "payload length is a 32-bit field");

struct peer_frame {
    EVP_MAC *mac;
    EVP_MAC_CTX *mac_ctx; /* keyed with mac_key at create */
    uint8_t mac_key[PEER_FRAME_KEY_LEN];
    uint8_t key_id[PEER_FRAME_KEY_ID_LEN];
    uint64_t boot_id;
    uint64_t seq; /* last seq sealed */
    uint64_t time_window_ms;
    peer_frame_stats_t stats; /* evicted, expired and senders are completed from senders' stats */
    uint64_t aged_evictions;  /* LRU drops of entries past the time window: counted as expired */
    replay_t *senders;        /* last-seen time: the highest sent_ms accepted */
};

/* --- helpers ------------------------------------------------------------------------ */

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int mac_of(const peer_frame_t *ctx, const uint8_t *data, size_t len, uint8_t mac[PEER_FRAME_MAC_LEN])
{
    size_t md_len = 0;
    if (EVP_MAC_init(ctx->mac_ctx, NULL, 0, NULL) != 1 || EVP_MAC_update(ctx->mac_ctx, data, len) != 1 ||
        EVP_MAC_final(ctx->mac_ctx, mac, &md_len, PEER_FRAME_MAC_LEN) != 1 || md_len != PEER_FRAME_MAC_LEN)
        return -EIO;
    return 0;
}

/* true if every frame s could still block is refused by the time check at now_ms anyway */
static bool sender_aged_out(const peer_frame_t *ctx, const replay_entry_t *s, uint64_t now_ms)
{
    return now_ms > ctx->time_window_ms && replay_last_ms(s) < now_ms - ctx->time_window_ms;
}

/* --- API ---------------------------------------------------------------------------- */

int peer_frame_create(const uint8_t *cluster_key, size_t key_len, uint64_t boot_id, const peer_frame_config_t *cfg,
                      peer_frame_t **out)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    uint32_t max_senders = cfg != NULL && cfg->max_senders != 0 ? cfg->max_senders : PEER_FRAME_DEFAULT_MAX_SENDERS;
    uint32_t window = cfg != NULL && cfg->time_window_ms != 0 ? cfg->time_window_ms : PEER_FRAME_DEFAULT_TIME_WINDOW_MS;
    if (cluster_key == NULL || key_len != PEER_FRAME_KEY_LEN || max_senders > REPLAY_MAX_CAPACITY)
        return -EINVAL;

    peer_frame_t *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return -ENOMEM;
    ctx->boot_id = boot_id;
    ctx->time_window_ms = window;
    ctx->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    ctx->mac_ctx = ctx->mac != NULL ? EVP_MAC_CTX_new(ctx->mac) : NULL;
    if (replay_create(max_senders, PEER_FRAME_WINDOW, 0, &ctx->senders) != 0 || ctx->mac_ctx == NULL) {
        peer_frame_free(ctx);
        return -ENOMEM;
    }

    /* HKDF-SHA256: PRK = HMAC(32 zero bytes, cluster key); key = HMAC(PRK, label || 0x01). */
    static const uint8_t zero_salt[32];
    uint8_t prk[32], info[LABEL_LEN + 1], digest[32];
    memcpy(info, PEER_FRAME_LABEL, LABEL_LEN);
    info[LABEL_LEN] = 0x01;
    unsigned int prk_len = 0, key_len_out = 0, digest_len = 0;
    char digest_name[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
                           OSSL_PARAM_construct_end()};
    int rc = -EIO;
    if (HMAC(EVP_sha256(), zero_salt, sizeof(zero_salt), cluster_key, key_len, prk, &prk_len) != NULL &&
        prk_len == sizeof(prk) &&
        HMAC(EVP_sha256(), prk, sizeof(prk), info, sizeof(info), ctx->mac_key, &key_len_out) != NULL &&
        key_len_out == sizeof(ctx->mac_key) &&
        EVP_Digest(ctx->mac_key, sizeof(ctx->mac_key), digest, &digest_len, EVP_sha256(), NULL) == 1 &&
        digest_len == sizeof(digest) && EVP_MAC_init(ctx->mac_ctx, ctx->mac_key, sizeof(ctx->mac_key), params) == 1)
        rc = 0;
    OPENSSL_cleanse(prk, sizeof(prk));
    memcpy(ctx->key_id, digest, sizeof(ctx->key_id));
    if (rc != 0) {
        peer_frame_free(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

void peer_frame_free(peer_frame_t *ctx)
{
    if (ctx == NULL)
        return;
    EVP_MAC_CTX_free(ctx->mac_ctx); /* cleanses its copy of the key */
    EVP_MAC_free(ctx->mac);
    replay_free(ctx->senders);
    OPENSSL_cleanse(ctx, sizeof(*ctx));
    free(ctx);
}

int peer_frame_seal(peer_frame_t *ctx, uint64_t now_ms, const uint8_t *payload, size_t len, uint8_t *out,
                    size_t out_cap, size_t *out_len)
{
    if (out_len != NULL)
        *out_len = 0;
    if (ctx == NULL || (payload == NULL && len > 0) || out == NULL || out_len == NULL)
        return -EINVAL;
    if (len > PEER_FRAME_MAX_PAYLOAD)
        return -EMSGSIZE;
    if (out_cap < len + PEER_FRAME_OVERHEAD)
        return -ENOBUFS;
    if (ctx->seq == UINT64_MAX)
        return -EOVERFLOW;

    if (len > 0 && payload != out + PEER_FRAME_HEADER_LEN)
        memmove(out + PEER_FRAME_HEADER_LEN, payload, len);
    memcpy(out, PEER_FRAME_MAGIC, 4);
    out[4] = PEER_FRAME_VERSION;
    out[5] = out[6] = out[7] = 0;
    memcpy(out + 8, ctx->key_id, PEER_FRAME_KEY_ID_LEN);
    put_be64(out + 16, ctx->boot_id);
    put_be64(out + 24, now_ms);
    put_be64(out + 32, ctx->seq + 1);
    put_be32(out + 40, (uint32_t)len);
    /* The seq is spent even if the MAC fails: a seq is never sealed twice. */
    ctx->seq++;
    if (mac_of(ctx, out, PEER_FRAME_HEADER_LEN + len, out + PEER_FRAME_HEADER_LEN + len) != 0)
        return -EIO;
    ctx->stats.sealed++;
    *out_len = len + PEER_FRAME_OVERHEAD;
    return 0;
}

static int refuse(peer_frame_t *ctx, peer_frame_reason_t reason, peer_frame_reason_t *why)
{
    ctx->stats.refused[reason]++;
    if (why != NULL)
        *why = reason;
    switch (reason) {
    case PEER_FRAME_TOO_LARGE:
        return -EMSGSIZE;
    case PEER_FRAME_WRONG_KEY:
        return -EKEYREJECTED;
    case PEER_FRAME_FORGED:
        return -EBADMSG;
    case PEER_FRAME_TIME_SKEW:
        return -ETIME;
    case PEER_FRAME_REPLAYED:
        return -EALREADY;
    case PEER_FRAME_TOO_OLD:
        return -ESTALE;
    default:
        return -EPROTO;
    }
}

int peer_frame_open(peer_frame_t *ctx, const uint8_t *frame, size_t len, uint64_t now_ms, peer_frame_info_t *info,
                    peer_frame_reason_t *why)
{
    if (info != NULL)
        memset(info, 0, sizeof(*info));
    if (why != NULL)
        *why = PEER_FRAME_OK;
    if (ctx == NULL || (frame == NULL && len > 0))
        return -EINVAL;
    if (len < PEER_FRAME_OVERHEAD)
        return refuse(ctx,
                      len >= 4 && memcmp(frame, PEER_FRAME_MAGIC, 4) != 0 ? PEER_FRAME_BAD_MAGIC : PEER_FRAME_MALFORMED,
                      why);
    if (memcmp(frame, PEER_FRAME_MAGIC, 4) != 0)
        return refuse(ctx, PEER_FRAME_BAD_MAGIC, why);
    if (frame[4] != PEER_FRAME_VERSION)
        return refuse(ctx, PEER_FRAME_BAD_VERSION, why);
    if (frame[5] != 0 || frame[6] != 0 || frame[7] != 0)
        return refuse(ctx, PEER_FRAME_MALFORMED, why);
    size_t payload_len = get_be32(frame + 40);
    if (payload_len > PEER_FRAME_MAX_PAYLOAD)
        return refuse(ctx, PEER_FRAME_TOO_LARGE, why);
    if (len != payload_len + PEER_FRAME_OVERHEAD)
        return refuse(ctx, PEER_FRAME_MALFORMED, why);
    if (memcmp(frame + 8, ctx->key_id, PEER_FRAME_KEY_ID_LEN) != 0)
        return refuse(ctx, PEER_FRAME_WRONG_KEY, why);

    uint8_t mac[PEER_FRAME_MAC_LEN];
    if (mac_of(ctx, frame, PEER_FRAME_HEADER_LEN + payload_len, mac) != 0)
        return -EIO;
    if (CRYPTO_memcmp(mac, frame + PEER_FRAME_HEADER_LEN + payload_len, PEER_FRAME_MAC_LEN) != 0)
        return refuse(ctx, PEER_FRAME_FORGED, why);

    uint64_t boot_id = get_be64(frame + 16);
    uint64_t sent_ms = get_be64(frame + 24);
    uint64_t seq = get_be64(frame + 32);
    uint64_t skew = sent_ms > now_ms ? sent_ms - now_ms : now_ms - sent_ms;
    if (skew > ctx->time_window_ms)
        return refuse(ctx, PEER_FRAME_TIME_SKEW, why);
    if (seq == 0) /* never sealed (seqs start at 1), yet authentic: a broken peer */
        return refuse(ctx, PEER_FRAME_MALFORMED, why);

    replay_entry_t *s = replay_find(ctx->senders, boot_id, 0);
    if (s != NULL) {
        replay_verdict_t v = replay_check(ctx->senders, s, seq);
        if (v == REPLAY_REPLAYED)
            return refuse(ctx, PEER_FRAME_REPLAYED, why);
        if (v == REPLAY_TOO_OLD)
            return refuse(ctx, PEER_FRAME_TOO_OLD, why);
    } else {
        const replay_entry_t *victim = replay_victim(ctx->senders);
        if (victim != NULL && sender_aged_out(ctx, victim, now_ms))
            ctx->aged_evictions++;
        s = replay_get(ctx->senders, boot_id, 0, NULL);
    }
    replay_accept(ctx->senders, s, seq);
    replay_touch(ctx->senders, s, sent_ms > replay_last_ms(s) ? sent_ms : replay_last_ms(s));
    ctx->stats.opened++;
    if (info != NULL) {
        info->boot_id = boot_id;
        info->sent_ms = sent_ms;
        info->seq = seq;
        info->payload = frame + PEER_FRAME_HEADER_LEN;
        info->payload_len = payload_len;
    }
    return 0;
}

size_t peer_frame_expire(peer_frame_t *ctx, uint64_t now_ms)
{
    if (ctx == NULL)
        return 0;
    /* LRU order is by last acceptance, not by newest sent_ms: scan the whole table (bounded).
     * The cut matches sender_aged_out: dropped when newest < now_ms - time_window_ms. */
    return replay_expire_scan(ctx->senders, now_ms, ctx->time_window_ms);
}

const char *peer_frame_reason_name(peer_frame_reason_t why)
{
    switch (why) {
    case PEER_FRAME_OK:
        return "ok";
    case PEER_FRAME_MALFORMED:
        return "malformed";
    case PEER_FRAME_BAD_MAGIC:
        return "bad_magic";
    case PEER_FRAME_BAD_VERSION:
        return "bad_frame_version";
    case PEER_FRAME_TOO_LARGE:
        return "too_large";
    case PEER_FRAME_WRONG_KEY:
        return "wrong_key_id";
    case PEER_FRAME_FORGED:
        return "bad_hmac";
    case PEER_FRAME_TIME_SKEW:
        return "time_skew";
    case PEER_FRAME_REPLAYED:
        return "replayed";
    case PEER_FRAME_TOO_OLD:
        return "too_old";
    case PEER_FRAME_REASON_COUNT:
        break;
    }
    return "unknown";
}

void peer_frame_key_id(const peer_frame_t *ctx, uint8_t out[PEER_FRAME_KEY_ID_LEN])
{
    memcpy(out, ctx->key_id, PEER_FRAME_KEY_ID_LEN);
}

uint64_t peer_frame_boot_id(const peer_frame_t *ctx)
{
    return ctx->boot_id;
}

uint64_t peer_frame_seq(const peer_frame_t *ctx)
{
    return ctx->seq;
}

void peer_frame_get_stats(const peer_frame_t *ctx, peer_frame_stats_t *out)
{
    replay_stats_t rs;
    replay_get_stats(ctx->senders, &rs);
    *out = ctx->stats;
    out->evicted = rs.evicted - ctx->aged_evictions;
    out->expired = rs.expired + ctx->aged_evictions;
    out->senders = rs.entries;
}

bool peer_version_compatible(uint32_t major_local, uint32_t major_remote, char *why, size_t why_cap)
{
    if (major_remote == major_local && major_local != 0)
        return true;
    if (why != NULL && why_cap > 0) {
        if (major_remote == 0)
            snprintf(why, why_cap, "peer announces no protocol version (major 0), this node speaks major %u: refused",
                     major_local);
        else
            snprintf(why, why_cap,
                     "peer protocol major version %u is incompatible with this node's %u: refused (a rolling upgrade "
                     "needs nodes of adjacent releases with the same major)",
                     major_remote, major_local);
    }
    return false;
}
