/* upstream_impl.h — what every upstream backend's struct starts with, for upstream.c's
 * dispatch. Private to the upstream_*.c files. */
#ifndef LLMRELAY_NODE_UPSTREAM_IMPL_H
#define LLMRELAY_NODE_UPSTREAM_IMPL_H

#include "node/upstream.h"

typedef struct upstream_vtable {
    const char *name;
    void (*resume)(upstream_t *u);
    void (*cancel)(upstream_t *u);
} upstream_vtable_t;

/* The first member of each backend's own struct. */
struct upstream {
    const upstream_vtable_t *vt;
};

#endif
