/* etcd_fixture: starts, stops and restarts a real etcd child process for the cluster
 * tests, and small helpers to run a uv loop until a condition holds.
 *
 * Ports are picked at random in 20000-40000 and checked by binding them first; if etcd
 * still dies at start (a race on the port), new ports are picked. Readiness is polled on
 * GET /health (true only once the member has a leader). Every started pid is recorded so
 * an atexit handler can SIGKILL it; the child also gets PR_SET_PDEATHSIG(SIGKILL).
 */
#include "cluster/tests/etcd_fixture.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TRACKED 16

static pid_t tracked[MAX_TRACKED];
static bool atexit_registered;

static void kill_tracked(void)
{
    for (int i = 0; i < MAX_TRACKED; i++) {
        if (tracked[i] > 0) {
            kill(tracked[i], SIGKILL);
            waitpid(tracked[i], NULL, 0);
            tracked[i] = 0;
        }
    }
}

static void track(pid_t pid)
{
    if (!atexit_registered) {
        atexit(kill_tracked);
        atexit_registered = true;
    }
    for (int i = 0; i < MAX_TRACKED; i++)
        if (tracked[i] == 0) {
            tracked[i] = pid;
            return;
        }
}

static void untrack(pid_t pid)
{
    for (int i = 0; i < MAX_TRACKED; i++)
        if (tracked[i] == pid)
            tracked[i] = 0;
}

static bool port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static int random_port(void)
{
    static bool seeded;
    if (!seeded) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        srandom((unsigned)(getpid() * 7919) ^ (unsigned)ts.tv_nsec);
        seeded = true;
    }
    for (;;) {
        int p = 20000 + (int)(random() % 20000);
        if (port_free(p))
            return p;
    }
}

int etcd_fixture_dead_port(void)
{
    return random_port();
}

static bool healthy(const etcd_fixture_t *f)
{
    char url[128];
    char body[256] = {0};
    snprintf(url, sizeof(url), "%s/health", f->endpoint);
    CURL *e = curl_easy_init();
    if (e == NULL)
        return false;
    FILE *mem = fmemopen(body, sizeof(body) - 1, "w");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 500L);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, mem);
    CURLcode rc = curl_easy_perform(e);
    long http = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &http);
    curl_easy_cleanup(e);
    fclose(mem);
    return rc == CURLE_OK && http == 200 && strstr(body, "\"true\"") != NULL;
}

static pid_t spawn(const etcd_fixture_t *f)
{
    char data[192], log[192], curl_[64], purl[64], cluster[96];
    snprintf(data, sizeof(data), "%s/data", f->dir);
    snprintf(log, sizeof(log), "%s/etcd.log", f->dir);
    snprintf(curl_, sizeof(curl_), "http://127.0.0.1:%d", f->client_port);
    snprintf(purl, sizeof(purl), "http://127.0.0.1:%d", f->peer_port);
    snprintf(cluster, sizeof(cluster), "default=%s", purl);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, 0);
        execl("/usr/bin/etcd", "etcd", "--name", "default", "--data-dir", data, "--listen-client-urls", curl_,
              "--advertise-client-urls", curl_, "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
              "--initial-cluster", cluster, "--heartbeat-interval", "50", "--election-timeout", "500",
              "--experimental-watch-progress-notify-interval", "1s", "--log-level", "warn", (char *)NULL);
        _exit(127);
    }
    track(pid);
    return pid;
}

/* Waits for health; returns 0, or -ECHILD if the process died, -ETIMEDOUT. */
static int wait_healthy(etcd_fixture_t *f)
{
    for (int i = 0; i < 300; i++) { /* 15 s */
        int st;
        if (waitpid(f->pid, &st, WNOHANG) == f->pid) {
            untrack(f->pid);
            f->pid = 0;
            return -ECHILD;
        }
        if (healthy(f))
            return 0;
        usleep(50 * 1000);
    }
    return -ETIMEDOUT;
}

static int launch(etcd_fixture_t *f)
{
    snprintf(f->endpoint, sizeof(f->endpoint), "http://127.0.0.1:%d", f->client_port);
    pid_t pid = spawn(f);
    if (pid < 0)
        return (int)pid;
    f->pid = pid;
    int rc = wait_healthy(f);
    if (rc != 0 && f->pid > 0)
        etcd_fixture_stop(f);
    return rc;
}

int etcd_fixture_start(etcd_fixture_t *f)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/llmrelay-etcd-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -errno;
    int rc = -EIO;
    for (int attempt = 0; attempt < 8; attempt++) {
        f->client_port = random_port();
        do
            f->peer_port = random_port();
        while (f->peer_port == f->client_port);
        rc = launch(f);
        if (rc != -ECHILD)
            break;
        /* Most likely a port race: wipe the half-initialised data dir and try new ports. */
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "%s/data", f->dir);
        char *const argv[] = {"rm", "-rf", cmd, NULL};
        pid_t p = fork();
        if (p == 0) {
            execv("/bin/rm", argv);
            _exit(127);
        }
        if (p > 0)
            waitpid(p, NULL, 0);
    }
    return rc;
}

void etcd_fixture_stop(etcd_fixture_t *f)
{
    if (f->pid <= 0)
        return;
    kill(f->pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(f->pid, NULL, WNOHANG) == f->pid)
            goto done;
        usleep(50 * 1000);
    }
    kill(f->pid, SIGKILL);
    waitpid(f->pid, NULL, 0);
done:
    untrack(f->pid);
    f->pid = 0;
}

int etcd_fixture_restart(etcd_fixture_t *f)
{
    etcd_fixture_stop(f);
    int rc = -EIO;
    for (int attempt = 0; attempt < 5; attempt++) {
        rc = launch(f);
        if (rc != -ECHILD)
            break;
        usleep(200 * 1000);
    }
    return rc;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void etcd_fixture_destroy(etcd_fixture_t *f)
{
    etcd_fixture_stop(f);
    if (f->dir[0] != '\0')
        nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    f->dir[0] = '\0';
}

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

bool fixture_run_until(uv_loop_t *loop, const bool *flag, uint64_t timeout_ms)
{
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, tick_cb, 10, 10);
    uv_update_time(loop);
    uint64_t deadline = uv_now(loop) + timeout_ms;
    while (!(flag && *flag) && uv_now(loop) < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return flag && *flag;
}

void fixture_run_for(uv_loop_t *loop, uint64_t ms)
{
    fixture_run_until(loop, NULL, ms);
}

int fixture_loop_close(uv_loop_t *loop)
{
    for (int i = 0; i < 100 && uv_run(loop, UV_RUN_NOWAIT) != 0; i++)
        usleep(1000);
    return uv_loop_close(loop);
}
