/* Tests of node/gossip.c's membership view and push-pull, in-process over loopback: two
 * gossip_t on one uv loop (ephemeral ports, no etcd). B joins A: both views list both
 * members alive (self flagged, peer address and region carried), the view version moves,
 * the listener hears A alive then left after A's graceful leave, and B's join push-pull
 * over TCP completed (gossip_pushpull_stats) with nothing dropped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/swim.h"
#include "node/gossip.h"

static const uint8_t KEY[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                                17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

typedef struct heard {
    char name[64];
    int status;
    int calls;
} heard_t;

static void listener(void *data, const char *name, int status)
{
    heard_t *h = data;
    snprintf(h->name, sizeof(h->name), "%s", name);
    h->status = status;
    h->calls++;
}

static int status_of(const gossip_t *g, const char *name, gossip_peer_t *out)
{
    gossip_peer_t peers[8];
    size_t n = gossip_view(g, peers, 8);
    for (size_t i = 0; i < n; i++)
        if (strcmp(peers[i].name, name) == 0) {
            if (out != NULL)
                *out = peers[i];
            return peers[i].status;
        }
    return -1;
}

/* Port 0: the UDP port the kernel picks may be taken for TCP (another process's
 * connection); gossip_start then fails with EADDRINUSE: pick again. */
static int start_retry(uv_loop_t *loop, const llmrelay_config_t *cfg, gossip_t **out)
{
    char err[256];
    int rc = -1;
    for (int i = 0; i < 50; i++) {
        rc = gossip_start(loop, cfg, KEY, sizeof(KEY), NULL, out, err, sizeof(err));
        if (rc != UV_EADDRINUSE)
            break;
        uv_run(loop, UV_RUN_NOWAIT); /* frees the failed attempt */
    }
    return rc;
}

/* Runs the loop until pred or ~5 s. */
static bool run_until(uv_loop_t *loop, bool (*pred)(void *), void *arg)
{
    uint64_t end = uv_now(loop) + 5000;
    while (!pred(arg) && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    return pred(arg);
}

typedef struct pair {
    gossip_t *a, *b;
    heard_t *heard;
} pair_t;

static bool both_alive(void *p)
{
    pair_t *pr = p;
    return status_of(pr->a, "b", NULL) == SWIM_ALIVE && status_of(pr->b, "a", NULL) == SWIM_ALIVE;
}

static bool b_pushpulled(void *p)
{
    gossip_pushpull_stats_t st;
    gossip_pushpull_stats(((pair_t *)p)->b, &st);
    return st.ok >= 1;
}

static bool a_left(void *p)
{
    pair_t *pr = p;
    return pr->heard->status == SWIM_LEFT && strcmp(pr->heard->name, "a") == 0;
}

static bool a_done(void *p)
{
    return gossip_leave_done(((pair_t *)p)->a);
}

static void test_view_and_pushpull(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    llmrelay_config_t ca, cb;
    memset(&ca, 0, sizeof(ca));
    memset(&cb, 0, sizeof(cb));
    ca.name = "a";
    ca.region = "eu";
    ca.gossip = "127.0.0.1:0";
    ca.peer_listen = "127.0.0.1:7001";
    gossip_t *a = NULL, *b = NULL;
    assert_int_equal(start_retry(&loop, &ca, &a), 0);
    assert_string_equal(gossip_self_name(a), "a");
    uint64_t v0 = gossip_view_version(a);
    assert_true(v0 > 0);
    gossip_peer_t me;
    assert_int_equal(status_of(a, "a", &me), SWIM_ALIVE);
    assert_true(me.self);
    assert_string_equal(me.peer_addr, "127.0.0.1:7001");
    assert_string_equal(me.region, "eu");

    /* A's gossip address from its own view is not exposed; take it from the admin view */
    admin_cluster_t cl;
    memset(&cl, 0, sizeof(cl));
    assert_int_equal(gossip_cluster(a, NULL, 0, &cl), 0);
    assert_int_equal(cl.n_members, 1);
    char join[64];
    snprintf(join, sizeof(join), "%s", cl.members[0].gossip);
    free(cl.members);
    cb.name = "b";
    cb.region = "us";
    cb.gossip = "127.0.0.1:0";
    cb.join = join;
    assert_int_equal(start_retry(&loop, &cb, &b), 0);
    heard_t heard = {{0}, -1, 0};
    gossip_set_listener(b, listener, &heard);
    pair_t pr = {a, b, &heard};
    assert_true(run_until(&loop, both_alive, &pr));
    assert_true(gossip_view_version(a) > v0);
    assert_true(heard.calls >= 1);
    gossip_peer_t pa;
    assert_int_equal(status_of(b, "a", &pa), SWIM_ALIVE);
    assert_false(pa.self);
    assert_string_equal(pa.peer_addr, "127.0.0.1:7001");
    assert_string_equal(pa.region, "eu");
    gossip_peer_t few[1];
    assert_int_equal(gossip_view(b, few, 1), 1); /* bounded by max */

    assert_true(run_until(&loop, b_pushpulled, &pr)); /* the push-pull right after joining */
    gossip_pushpull_stats_t st;
    gossip_pushpull_stats(b, &st);
    assert_int_equal(st.forged + st.malformed + st.timeouts + st.refused, 0);

    uint64_t vb = gossip_view_version(b);
    gossip_leave(a);
    assert_true(run_until(&loop, a_left, &pr));
    assert_true(gossip_view_version(b) > vb);
    assert_true(run_until(&loop, a_done, &pr));

    gossip_set_listener(b, NULL, NULL);
    gossip_stop(a);
    gossip_stop(b);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_view_and_pushpull),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
