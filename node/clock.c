/* clock.c — real time plus a test-controlled offset (see clock.h). */
#include "node/clock.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static int read_offset(const char *path, int64_t *out, int64_t *mtime_ns)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -errno;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -errno;
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    while (*end == '\n' || *end == '\r' || *end == ' ')
        end++;
    if (errno != 0 || end == buf || *end != '\0')
        return -EINVAL;
    *out = v;
    *mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    return 0;
}

int clock_init(node_clock_t *c)
{
    memset(c, 0, sizeof(*c));
    atomic_init(&c->offset_ms, 0);
    const char *path = getenv("LLMRELAY_CLOCK_FILE");
    if (path == NULL || path[0] == '\0')
        return 0;
    c->file = strdup(path);
    if (c->file == NULL)
        return -ENOMEM;
    int64_t off = 0;
    int ret = read_offset(c->file, &off, &c->file_mtime_ns);
    if (ret != 0)
        return ret;
    atomic_store(&c->offset_ms, off);
    return 0;
}

void clock_dispose(node_clock_t *c)
{
    free(c->file);
    c->file = NULL;
}

bool clock_poll(node_clock_t *c)
{
    if (c->file == NULL)
        return false;
    struct stat st;
    if (stat(c->file, &st) != 0)
        return false;
    int64_t mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    if (mtime == c->file_mtime_ns)
        return false;
    int64_t off = 0;
    if (read_offset(c->file, &off, &c->file_mtime_ns) != 0)
        return false;
    return atomic_exchange(&c->offset_ms, off) != off;
}

int64_t clock_now_ms(const node_clock_t *c)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 +
           atomic_load_explicit(&c->offset_ms, memory_order_relaxed);
}
