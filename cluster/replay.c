/* replay: bounded sender table with per-entry replay windows (see replay.h).
 *
 * Memory: one calloc'd array of capacity slots of stride bytes each: the entry header,
 * then the user data (rounded up to 8 bytes), then the ring words. Free slots are chained
 * through hash_next from free_head.
 */
#include "cluster/replay.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NIL UINT32_MAX

struct replay_entry {
    uint64_t a;
    uint64_t b;
    uint64_t top;       /* highest counter accepted; 0 while none */
    uint64_t last_ms;   /* set by replay_touch */
    uint32_t hash_next; /* next in the bucket chain, or in the free list */
    uint32_t lru_prev;  /* towards the most recently used */
    uint32_t lru_next;  /* towards the least recently used */
    uint32_t unused;
};

_Static_assert(sizeof(struct replay_entry) % 8 == 0, "user data and ring stay 8-byte aligned");

struct replay {
    uint8_t *slots;
    size_t stride;
    size_t ring_offset; /* of the ring words within a slot */
    uint32_t ring_words;
    uint32_t window_bits;
    uint32_t capacity;
    uint32_t *buckets;
    uint32_t bucket_mask;
    uint32_t free_head;
    uint32_t lru_head; /* most recently used */
    uint32_t lru_tail; /* least recently used: dropped first */
    replay_stats_t stats;
};

static replay_entry_t *slot(const replay_t *t, uint32_t i)
{
    return (replay_entry_t *)(t->slots + (size_t)i * t->stride);
}

static uint32_t index_of(const replay_t *t, const replay_entry_t *e)
{
    return (uint32_t)(((const uint8_t *)e - t->slots) / t->stride);
}

static uint64_t *ring_of(const replay_t *t, const replay_entry_t *e)
{
    return (uint64_t *)((uint8_t *)e + t->ring_offset);
}

static uint32_t bucket_of(const replay_t *t, uint64_t a, uint64_t b)
{
    /* splitmix64 finalizer; entries only exist for authenticated senders, so no flooding */
    uint64_t h = b ^ (a * 0x9e3779b97f4a7c15ULL);
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return (uint32_t)h & t->bucket_mask;
}

int replay_create(uint32_t capacity, uint32_t window_bits, size_t user_size, replay_t **out)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (capacity == 0 || capacity > REPLAY_MAX_CAPACITY || window_bits == 0 || window_bits % 64 != 0 ||
        window_bits > REPLAY_MAX_WINDOW_BITS || user_size > REPLAY_MAX_USER_SIZE)
        return -EINVAL;
    uint32_t nbuckets = 1;
    while (nbuckets < 2 * capacity)
        nbuckets <<= 1;

    replay_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    t->capacity = capacity;
    t->window_bits = window_bits;
    t->ring_words = window_bits / 64 + 1;
    t->ring_offset = sizeof(replay_entry_t) + (user_size + 7) / 8 * 8;
    t->stride = t->ring_offset + t->ring_words * sizeof(uint64_t);
    t->bucket_mask = nbuckets - 1;
    t->slots = calloc(capacity, t->stride);
    t->buckets = malloc(nbuckets * sizeof(uint32_t));
    if (t->slots == NULL || t->buckets == NULL) {
        replay_free(t);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < nbuckets; i++)
        t->buckets[i] = NIL;
    for (uint32_t i = 0; i < capacity; i++) {
        replay_entry_t *e = slot(t, i);
        e->hash_next = i + 1 < capacity ? i + 1 : NIL;
        e->lru_prev = e->lru_next = NIL;
    }
    t->free_head = 0;
    t->lru_head = t->lru_tail = NIL;
    *out = t;
    return 0;
}

void replay_free(replay_t *t)
{
    if (t == NULL)
        return;
    if (t->slots != NULL) {
        explicit_bzero(t->slots, (size_t)t->capacity * t->stride);
        free(t->slots);
    }
    free(t->buckets);
    free(t);
}

replay_entry_t *replay_find(const replay_t *t, uint64_t a, uint64_t b)
{
    for (uint32_t i = t->buckets[bucket_of(t, a, b)]; i != NIL;) {
        replay_entry_t *e = slot(t, i);
        if (e->a == a && e->b == b)
            return e;
        i = e->hash_next;
    }
    return NULL;
}

static void lru_unlink(replay_t *t, uint32_t i)
{
    replay_entry_t *e = slot(t, i);
    if (e->lru_prev != NIL)
        slot(t, e->lru_prev)->lru_next = e->lru_next;
    else
        t->lru_head = e->lru_next;
    if (e->lru_next != NIL)
        slot(t, e->lru_next)->lru_prev = e->lru_prev;
    else
        t->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NIL;
}

static void lru_push_head(replay_t *t, uint32_t i)
{
    replay_entry_t *e = slot(t, i);
    e->lru_prev = NIL;
    e->lru_next = t->lru_head;
    if (t->lru_head != NIL)
        slot(t, t->lru_head)->lru_prev = i;
    t->lru_head = i;
    if (t->lru_tail == NIL)
        t->lru_tail = i;
}

static void entry_remove(replay_t *t, uint32_t i)
{
    replay_entry_t *e = slot(t, i);
    uint32_t *link = &t->buckets[bucket_of(t, e->a, e->b)];
    while (*link != i) {
        assert(*link != NIL);
        link = &slot(t, *link)->hash_next;
    }
    *link = e->hash_next;
    lru_unlink(t, i);
    explicit_bzero(e, t->stride);
    e->lru_prev = e->lru_next = NIL;
    e->hash_next = t->free_head;
    t->free_head = i;
    assert(t->stats.entries > 0);
    t->stats.entries--;
}

replay_entry_t *replay_get(replay_t *t, uint64_t a, uint64_t b, bool *created)
{
    if (created != NULL)
        *created = false;
    replay_entry_t *e = replay_find(t, a, b);
    if (e != NULL) {
        uint32_t i = index_of(t, e);
        lru_unlink(t, i);
        lru_push_head(t, i);
        return e;
    }
    if (t->free_head == NIL) {
        assert(t->lru_tail != NIL);
        entry_remove(t, t->lru_tail);
        t->stats.evicted++;
    }
    uint32_t i = t->free_head;
    e = slot(t, i);
    t->free_head = e->hash_next;
    memset(e, 0, t->stride);
    e->a = a;
    e->b = b;
    uint32_t bucket = bucket_of(t, a, b);
    e->hash_next = t->buckets[bucket];
    t->buckets[bucket] = i;
    lru_push_head(t, i);
    t->stats.entries++;
    if (created != NULL)
        *created = true;
    return e;
}

const replay_entry_t *replay_victim(const replay_t *t)
{
    return t->free_head == NIL ? slot(t, t->lru_tail) : NULL;
}

replay_verdict_t replay_check(const replay_t *t, const replay_entry_t *e, uint64_t counter)
{
    if (counter > e->top)
        return REPLAY_OK;
    if (e->top - counter >= t->window_bits)
        return REPLAY_TOO_OLD;
    uint64_t word = ring_of(t, e)[(counter / 64) % t->ring_words];
    return (word >> (counter % 64)) & 1 ? REPLAY_REPLAYED : REPLAY_OK;
}

void replay_accept(replay_t *t, replay_entry_t *e, uint64_t counter)
{
    uint64_t *ring = ring_of(t, e);
    if (counter > e->top) {
        uint64_t blocks = counter / 64 - e->top / 64;
        if (blocks > t->ring_words)
            blocks = t->ring_words;
        for (uint64_t b = 1; b <= blocks; b++)
            ring[(e->top / 64 + b) % t->ring_words] = 0;
        e->top = counter;
    }
    assert(e->top - counter < t->window_bits);
    ring[(counter / 64) % t->ring_words] |= (uint64_t)1 << (counter % 64);
}

void replay_touch(replay_t *t, replay_entry_t *e, uint64_t now_ms)
{
    uint32_t i = index_of(t, e);
    e->last_ms = now_ms;
    lru_unlink(t, i);
    lru_push_head(t, i);
}

size_t replay_expire(replay_t *t, uint64_t now_ms, uint64_t idle_ms)
{
    if (now_ms < idle_ms)
        return 0;
    uint64_t cutoff = now_ms - idle_ms;
    size_t dropped = 0;
    while (t->lru_tail != NIL && slot(t, t->lru_tail)->last_ms < cutoff) {
        entry_remove(t, t->lru_tail);
        t->stats.expired++;
        dropped++;
    }
    return dropped;
}

size_t replay_expire_scan(replay_t *t, uint64_t now_ms, uint64_t idle_ms)
{
    if (now_ms < idle_ms)
        return 0;
    uint64_t cutoff = now_ms - idle_ms;
    size_t dropped = 0;
    for (uint32_t i = t->lru_tail; i != NIL;) {
        uint32_t prev = slot(t, i)->lru_prev;
        if (slot(t, i)->last_ms < cutoff) {
            entry_remove(t, i);
            t->stats.expired++;
            dropped++;
        }
        i = prev;
    }
    return dropped;
}

void *replay_data(replay_entry_t *e)
{
    return e + 1;
}

uint64_t replay_key_a(const replay_entry_t *e)
{
    return e->a;
}

uint64_t replay_key_b(const replay_entry_t *e)
{
    return e->b;
}

uint64_t replay_top(const replay_entry_t *e)
{
    return e->top;
}

uint64_t replay_last_ms(const replay_entry_t *e)
{
    return e->last_ms;
}

void replay_get_stats(const replay_t *t, replay_stats_t *out)
{
    *out = t->stats;
}
