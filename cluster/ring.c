/* ring: rendezvous hashing of key ids over the cluster members (see ring.h).
 *
 * A ring is one allocation: the header, the member array and the copied names. Each member
 * keeps the SipHash-2-4 state (K_score) after absorbing its own h_member as the first
 * message block, so score(m, k) = SipHash-2-4(K_score, le64(h_member) || le64(h_key)) only
 * has to absorb h_key, the length block and finalize: 8 SipRounds per member per lookup.
 *
 * SipHash-2-4 is written here from its specification (Aumasson, Bernstein 2012): state
 * v0..v3 from the key and four constants, each 8-byte little-endian word m absorbed as
 * v3 ^= m, 2 SipRounds, v0 ^= m; the last word holds the remaining bytes and len mod 256
 * in its top byte; finalization v2 ^= 0xff, 4 SipRounds, output v0 ^ v1 ^ v2 ^ v3.
 */
#include "cluster/ring.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Part of the placement: changing any of these reassigns every key (see ring.h). The keys
 * are the first 16 bytes (the NUL is room for the terminator only). */
static const uint8_t K_MEMBER[17] = "llmrelay/ring/m1";
static const uint8_t K_KEY[17] = "llmrelay/ring/k1";
static const uint8_t K_SCORE[17] = "llmrelay/ring/s1";

/* Members ranked per pass of ring_rank (their scores live on the stack). */
#define RANK_CHUNK 16

typedef struct sip_state {
    uint64_t v0, v1, v2, v3;
} sip_state_t;

struct ring_member {
    sip_state_t mid; /* K_score state after absorbing le64(h_member) */
    const char *name;
};

struct ring {
    size_t n;
    struct ring_member members[];
};

static inline uint64_t rotl64(uint64_t x, unsigned b)
{
    return (x << b) | (x >> (64 - b));
}

static inline uint64_t load_le64(const uint8_t *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 |
           (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

static inline void sip_round(sip_state_t *s)
{
    s->v0 += s->v1;
    s->v1 = rotl64(s->v1, 13);
    s->v1 ^= s->v0;
    s->v0 = rotl64(s->v0, 32);
    s->v2 += s->v3;
    s->v3 = rotl64(s->v3, 16);
    s->v3 ^= s->v2;
    s->v0 += s->v3;
    s->v3 = rotl64(s->v3, 21);
    s->v3 ^= s->v0;
    s->v2 += s->v1;
    s->v1 = rotl64(s->v1, 17);
    s->v1 ^= s->v2;
    s->v2 = rotl64(s->v2, 32);
}

static inline void sip_init(sip_state_t *s, const uint8_t key[16])
{
    uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
    s->v0 = k0 ^ 0x736f6d6570736575ULL;
    s->v1 = k1 ^ 0x646f72616e646f6dULL;
    s->v2 = k0 ^ 0x6c7967656e657261ULL;
    s->v3 = k1 ^ 0x7465646279746573ULL;
}

static inline void sip_absorb(sip_state_t *s, uint64_t m)
{
    s->v3 ^= m;
    sip_round(s);
    sip_round(s);
    s->v0 ^= m;
}

static inline uint64_t sip_finish(sip_state_t *s)
{
    s->v2 ^= 0xff;
    sip_round(s);
    sip_round(s);
    sip_round(s);
    sip_round(s);
    return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

uint64_t ring_siphash24(const uint8_t key[16], const void *data, size_t len)
{
    const uint8_t *p = data;
    sip_state_t s;
    sip_init(&s, key);
    size_t whole = len - len % 8;
    for (size_t i = 0; i < whole; i += 8)
        sip_absorb(&s, load_le64(p + i));
    uint64_t last = (uint64_t)(len & 0xff) << 56;
    for (size_t i = 0; i < len % 8; i++)
        last |= (uint64_t)p[whole + i] << (8 * i);
    sip_absorb(&s, last);
    return sip_finish(&s);
}

uint64_t ring_key_hash(const void *key_id, size_t key_len)
{
    static const uint8_t empty[1];
    return ring_siphash24(K_KEY, key_len ? key_id : empty, key_len);
}

/* SipHash-2-4(K_score, le64(h_member) || le64(h_key)) from the member's midstate. */
static inline uint64_t score_of(const struct ring_member *m, uint64_t key_hash)
{
    sip_state_t s = m->mid;
    sip_absorb(&s, key_hash);
    sip_absorb(&s, (uint64_t)16 << 56); /* no bytes left, length 16 */
    return sip_finish(&s);
}

/* The ranking order: higher score first, then the name that sorts first. A total order,
 * since names are distinct. */
static inline bool ranks_before(uint64_t score_a, const char *name_a, uint64_t score_b, const char *name_b)
{
    if (score_a != score_b)
        return score_a > score_b;
    return strcmp(name_a, name_b) < 0;
}

typedef struct hashed_name {
    uint64_t hash;
    const char *name;
} hashed_name_t;

static int hashed_name_cmp(const void *a, const void *b)
{
    const hashed_name_t *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Any two equal names, in O(N log N): equal names have equal hashes, so after sorting by
 * (hash, name) duplicates are neighbours. */
static bool has_duplicates(const char *const *names, size_t n, bool *dup)
{
    if (n < 2) {
        *dup = false;
        return true;
    }
    hashed_name_t *tmp = malloc(n * sizeof(*tmp));
    if (tmp == NULL)
        return false;
    for (size_t i = 0; i < n; i++) {
        tmp[i].hash = ring_siphash24(K_MEMBER, names[i], strlen(names[i]));
        tmp[i].name = names[i];
    }
    qsort(tmp, n, sizeof(*tmp), hashed_name_cmp);
    *dup = false;
    for (size_t i = 1; i < n && !*dup; i++)
        *dup = tmp[i].hash == tmp[i - 1].hash && strcmp(tmp[i].name, tmp[i - 1].name) == 0;
    free(tmp);
    return true;
}

int ring_create(const char *const *names, size_t n, ring_t **out)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (n > RING_MAX_MEMBERS)
        return -E2BIG;
    if (n > 0 && names == NULL)
        return -EINVAL;
    size_t name_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        if (names[i] == NULL)
            return -EINVAL;
        size_t len = strnlen(names[i], RING_NAME_MAX + 1);
        if (len == 0 || len > RING_NAME_MAX)
            return -EINVAL;
        name_bytes += len + 1;
    }
    bool dup;
    if (!has_duplicates(names, n, &dup))
        return -ENOMEM;
    if (dup)
        return -EINVAL;

    size_t head = sizeof(ring_t) + n * sizeof(struct ring_member);
    ring_t *ring = malloc(head + name_bytes);
    if (ring == NULL)
        return -ENOMEM;
    ring->n = n;
    char *copy = (char *)ring + head;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(names[i]);
        memcpy(copy, names[i], len + 1);
        struct ring_member *m = &ring->members[i];
        m->name = copy;
        sip_init(&m->mid, K_SCORE);
        sip_absorb(&m->mid, ring_siphash24(K_MEMBER, copy, len));
        copy += len + 1;
    }
    *out = ring;
    return 0;
}

void ring_destroy(ring_t *ring)
{
    free(ring);
}

size_t ring_size(const ring_t *ring)
{
    return ring->n;
}

const char *ring_member_name(const ring_t *ring, size_t index)
{
    return index < ring->n ? ring->members[index].name : NULL;
}

int ring_find(const ring_t *ring, const char *name)
{
    for (size_t i = 0; i < ring->n; i++)
        if (strcmp(ring->members[i].name, name) == 0)
            return (int)i;
    return -ENOENT;
}

int ring_owner_hashed(const ring_t *ring, uint64_t key_hash)
{
    if (ring->n == 0)
        return -ENOENT;
    size_t best = 0;
    uint64_t best_score = score_of(&ring->members[0], key_hash);
    for (size_t i = 1; i < ring->n; i++) {
        uint64_t s = score_of(&ring->members[i], key_hash);
        if (ranks_before(s, ring->members[i].name, best_score, ring->members[best].name)) {
            best = i;
            best_score = s;
        }
    }
    return (int)best;
}

int ring_owner(const ring_t *ring, const void *key_id, size_t key_len)
{
    return ring_owner_hashed(ring, ring_key_hash(key_id, key_len));
}

/* Up to m (<= RANK_CHUNK) best members that rank after (after_score, after_name) - or
 * the best overall when after_name is NULL - written in order to out. Returns how many;
 * *last_score is the score of the last one written. */
static size_t rank_chunk(const ring_t *ring, uint64_t key_hash, uint64_t after_score, const char *after_name, int *out,
                         size_t m, uint64_t *last_score)
{
    uint64_t scores[RANK_CHUNK];
    size_t count = 0;
    assert(m <= RANK_CHUNK);
    for (size_t i = 0; i < ring->n; i++) {
        const char *name = ring->members[i].name;
        uint64_t s = score_of(&ring->members[i], key_hash);
        if (after_name != NULL && !ranks_before(after_score, after_name, s, name))
            continue;
        if (count == m && !ranks_before(s, name, scores[count - 1], ring->members[out[count - 1]].name))
            continue;
        size_t pos = count < m ? count++ : m - 1;
        while (pos > 0 && ranks_before(s, name, scores[pos - 1], ring->members[out[pos - 1]].name)) {
            scores[pos] = scores[pos - 1];
            out[pos] = out[pos - 1];
            pos--;
        }
        scores[pos] = s;
        out[pos] = (int)i;
    }
    if (count > 0)
        *last_score = scores[count - 1];
    return count;
}

size_t ring_rank_hashed(const ring_t *ring, uint64_t key_hash, int *out, size_t k)
{
    if (k > ring->n)
        k = ring->n;
    size_t done = 0;
    uint64_t last_score = 0;
    while (done < k) {
        size_t want = k - done < RANK_CHUNK ? k - done : RANK_CHUNK;
        const char *after = done > 0 ? ring->members[out[done - 1]].name : NULL;
        size_t got = rank_chunk(ring, key_hash, last_score, after, out + done, want, &last_score);
        assert(got == want);
        done += got;
    }
    return done;
}

size_t ring_rank(const ring_t *ring, const void *key_id, size_t key_len, int *out, size_t k)
{
    return ring_rank_hashed(ring, ring_key_hash(key_id, key_len), out, k);
}
