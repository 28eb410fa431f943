/* etcd_fixture: runs a real single-member etcd (/usr/bin/etcd) on loopback for tests.
 *
 * Each fixture gets a fresh temp data dir and random free ports in 20000-40000 (retried
 * when taken: ctest runs test binaries in parallel). The child dies with the test process
 * (PR_SET_PDEATHSIG) and an atexit handler kills whatever is still running, so no etcd
 * is left behind even when a test fails or crashes.
 *
 * Ownership: the caller owns the etcd_fixture_t (usually static or on the stack); strings
 * inside it live as long as it does.
 */
#ifndef LLMRELAY_CLUSTER_TESTS_ETCD_FIXTURE_H
#define LLMRELAY_CLUSTER_TESTS_ETCD_FIXTURE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef struct etcd_fixture {
    pid_t pid; /* 0 when not running */
    int client_port, peer_port;
    char dir[128];     /* temp dir holding data/ and etcd.log */
    char endpoint[64]; /* "http://127.0.0.1:<client_port>" */
} etcd_fixture_t;

/* Starts a new etcd (new dir, new ports) and waits until /health answers. 0 or <0. */
int etcd_fixture_start(etcd_fixture_t *f);
/* Stops the process (SIGTERM, then SIGKILL after 5 s); keeps the data dir and ports. */
void etcd_fixture_stop(etcd_fixture_t *f);
/* Starts it again on the same ports and data, waits until healthy. 0 or <0. */
int etcd_fixture_restart(etcd_fixture_t *f);
/* Stops it and removes the data dir. */
void etcd_fixture_destroy(etcd_fixture_t *f);

/* A loopback port nothing listens on (for failover tests). */
int etcd_fixture_dead_port(void);

/* Runs loop until *flag is true or timeout_ms elapsed; returns *flag. */
bool fixture_run_until(uv_loop_t *loop, const bool *flag, uint64_t timeout_ms);
/* Runs loop for ms milliseconds. */
void fixture_run_for(uv_loop_t *loop, uint64_t ms);
/* Closes every handle left and runs the loop until it is empty; returns uv_loop_close. */
int fixture_loop_close(uv_loop_t *loop);

#endif
