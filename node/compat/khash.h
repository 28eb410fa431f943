/* khash.h — a stand-in for the khash header that Debian's libh2o-dev does not ship.
 *
 * <h2o/http2_internal.h> includes "khash.h" only to declare the type of one pointer
 * member (the stream table of h2o_http2_conn_t) and one inline lookup. server.c needs that
 * header for the connection's state and write buffer (the Rapid Reset GOAWAY), never the
 * stream table itself, so this declares just enough for the header to compile with the
 * library's real struct layout: the table is reached through a pointer whose target
 * llmrelay never touches. The lookup is declared but never defined; using it would fail
 * at link time rather than misbehave. */
#ifndef LLMRELAY_COMPAT_KHASH_H
#define LLMRELAY_COMPAT_KHASH_H

#include <stdint.h>

typedef unsigned int khint_t;
typedef khint_t khiter_t;

#define KHASH_MAP_INIT_INT64(name, khval_t)                                                                        \
    typedef struct kh_##name##_s {                                                                                 \
        khint_t n_buckets, size, n_occupied, upper_bound;                                                         \
        uint32_t *flags;                                                                                           \
        uint64_t *keys;                                                                                            \
        khval_t *vals;                                                                                             \
    } kh_##name##_t;                                                                                               \
    khint_t llmrelay_khash_lookup_unavailable_##name(const kh_##name##_t *h, uint64_t key);

#define khash_t(name) kh_##name##_t
#define kh_get(name, h, k) llmrelay_khash_lookup_unavailable_##name((h), (k))
#define kh_end(h) ((h)->n_buckets)
#define kh_val(h, x) ((h)->vals[x])

#endif
