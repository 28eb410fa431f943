/* gossip.c — SWIM membership on the main loop (see gossip.h).
 *
 * Thin glue: a repeating GOSSIP_TICK_MS timer calls swim_tick and then drains swim's
 * outbox (seal, resolve, uv_udp_try_send: UDP may drop, and so may we when the socket
 * buffer is full) and its events (log lines). Received datagrams are opened with
 * gossip_seal before swim sees them, so nothing unauthenticated reaches the state machine.
 * Time given to swim is uv_now (monotonic ms); wall-clock jumps do not disturb timeouts. */
#include "node/gossip.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "cluster/gossip_seal.h"
#include "cluster/ring.h"
#include "cluster/swim.h"
#include "node/log.h"

#define GOSSIP_MAX_SEEDS 64
#define GOSSIP_RESOLVE_CACHE 16
#define GOSSIP_SENDER_IDLE_MS (10ULL * 60 * 1000) /* forget replay windows of silent senders */

typedef struct resolved {
    char addr[SWIM_NAME_MAX];
    struct sockaddr_storage sa;
} resolved_t;

struct gossip {
    uv_loop_t *loop;
    uv_udp_t udp;
    uv_timer_t timer;
    swim_t *swim;
    gossip_seal_t *seal;
    uint64_t sender_id;
    bool leaving, left;
    uint64_t leave_at;
    int open_handles;
    uint64_t drops_logged;
    char self_name[SWIM_NAME_MAX];
    resolved_t cache[GOSSIP_RESOLVE_CACHE];
    size_t cache_next;
    uint8_t rx[GOSSIP_SEAL_MAX_PACKET + 64];
    uint8_t plain[GOSSIP_SEAL_MAX_PLAIN];
    uint8_t tx[GOSSIP_SEAL_MAX_PACKET];
};

static const char *status_name(swim_status_t st)
{
    switch (st) {
    case SWIM_ALIVE:
        return "alive";
    case SWIM_SUSPECT:
        return "suspect";
    case SWIM_DEAD:
        return "dead";
    case SWIM_LEFT:
        return "left";
    }
    return "unknown";
}

/* "host:port" or "[v6]:port" → host and port strings. */
static int split_hostport(const char *addr, char *host, size_t hostcap, const char **port)
{
    const char *colon;
    const char *h = addr;
    size_t hl;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (close == NULL || close[1] != ':')
            return -EINVAL;
        h = addr + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL)
            return -EINVAL;
        hl = (size_t)(colon - addr);
    }
    if (hl == 0 || hl >= hostcap || colon[1] == '\0')
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = colon + 1;
    return 0;
}

/* Numeric addresses are parsed; names are resolved (blocking getaddrinfo) once and cached:
 * in practice only --join seeds given as host names. */
static int resolve(gossip_t *g, const char *addr, struct sockaddr_storage *out)
{
    char host[SWIM_NAME_MAX];
    const char *port;
    if (split_hostport(addr, host, sizeof(host), &port) != 0)
        return -EINVAL;
    char *end;
    long p = strtol(port, &end, 10);
    if (*end != '\0' || p < 0 || p > 65535)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    if (uv_ip4_addr(host, (int)p, (struct sockaddr_in *)out) == 0 ||
        uv_ip6_addr(host, (int)p, (struct sockaddr_in6 *)out) == 0)
        return 0;
    for (size_t i = 0; i < GOSSIP_RESOLVE_CACHE; i++)
        if (g->cache[i].addr[0] != '\0' && strcmp(g->cache[i].addr, addr) == 0) {
            *out = g->cache[i].sa;
            return 0;
        }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
        return -EHOSTUNREACH;
    memcpy(out, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    resolved_t *c = &g->cache[g->cache_next++ % GOSSIP_RESOLVE_CACHE];
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    c->sa = *out;
    return 0;
}

static int format_addr(const struct sockaddr *sa, char *out, size_t cap)
{
    char ip[64];
    int port;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        if (uv_ip4_name(in, ip, sizeof(ip)) != 0)
            return -EINVAL;
        port = ntohs(in->sin_port);
        return snprintf(out, cap, "%s:%d", ip, port) < (int)cap ? 0 : -ENOBUFS;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (uv_ip6_name(in6, ip, sizeof(ip)) != 0)
            return -EINVAL;
        port = ntohs(in6->sin6_port);
        return snprintf(out, cap, "[%s]:%d", ip, port) < (int)cap ? 0 : -ENOBUFS;
    }
    return -EAFNOSUPPORT;
}

static void drain_outputs(gossip_t *g)
{
    swim_datagram_t d;
    while (swim_pop_datagram(g->swim, &d)) {
        struct sockaddr_storage sa;
        size_t len = 0;
        if (resolve(g, d.to, &sa) != 0) {
            log_debug("gossip: cannot resolve %s; datagram dropped", d.to);
            continue;
        }
        if (gossip_seal_seal(g->seal, g->sender_id, d.data, d.len, g->tx, sizeof(g->tx), &len) != 0)
            continue;
        uv_buf_t buf = uv_buf_init((char *)g->tx, (unsigned)len);
        int rc = uv_udp_try_send(&g->udp, &buf, 1, (const struct sockaddr *)&sa);
        if (rc < 0 && rc != UV_EAGAIN)
            log_debug("gossip: send to %s: %s", d.to, uv_strerror(rc));
    }
    swim_event_t ev;
    while (swim_pop_event(g->swim, &ev)) {
        const swim_record_t *r = &ev.member.rec;
        switch (ev.kind) {
        case SWIM_EVENT_ALIVE:
            log_info("member %s alive (region %s, gossip %s, version %s, incarnation %u)", r->name, r->region,
                     r->gossip_addr, r->version, ev.member.incarnation);
            break;
        case SWIM_EVENT_SUSPECT:
            log_info("member %s suspect", r->name);
            break;
        case SWIM_EVENT_DEAD:
            log_info("member %s dead", r->name);
            break;
        case SWIM_EVENT_LEFT:
            log_info("member %s left", r->name);
            break;
        case SWIM_EVENT_UPDATE:
            log_info("member %s updated (gossip %s, version %s)", r->name, r->gossip_addr, r->version);
            break;
        case SWIM_EVENT_PUSHPULL:
            break; /* push-pull over TCP is not run yet */
        }
    }
}

static void on_tick(uv_timer_t *t)
{
    gossip_t *g = t->data;
    uint64_t now = uv_now(g->loop);
    swim_tick(g->swim, now);
    drain_outputs(g);
    gossip_seal_expire(g->seal, now, GOSSIP_SENDER_IDLE_MS);
    if (g->leaving && !g->left && (swim_broadcast_count(g->swim) == 0 || now - g->leave_at >= GOSSIP_LEAVE_MAX_MS)) {
        g->left = true;
        log_info("gossip: leave announced");
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    gossip_t *g = h->data;
    *buf = uv_buf_init((char *)g->rx, sizeof(g->rx));
}

static void on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr, unsigned flags)
{
    gossip_t *g = h->data;
    (void)buf;
    if (nread <= 0 || addr == NULL)
        return;
    uint64_t now = uv_now(g->loop);
    size_t len = (size_t)nread;
    if ((flags & UV_UDP_PARTIAL) != 0)
        len = sizeof(g->rx); /* truncated: longer than any packet, so open counts it malformed */
    size_t plain_len = 0;
    int rc = gossip_seal_open(g->seal, g->rx, len, now, g->plain, sizeof(g->plain), &plain_len, NULL);
    char from[SWIM_NAME_MAX];
    if (format_addr(addr, from, sizeof(from)) != 0)
        snprintf(from, sizeof(from), "?");
    if (rc != 0) {
        /* Bounded logging: the 1st, 2nd, 4th, 8th... drop. */
        uint64_t n = ++g->drops_logged;
        if ((n & (n - 1)) == 0)
            log_warn("gossip: dropped a packet from %s (%s); %llu dropped so far", from,
                     rc == -EPROTO     ? "malformed"
                     : rc == -EBADMSG  ? "forged or another cluster key"
                     : rc == -EALREADY ? "replayed"
                     : rc == -ESTALE   ? "too old"
                                       : "error",
                     (unsigned long long)n);
        explicit_bzero(g->rx, len);
        return;
    }
    swim_on_message(g->swim, now, from, g->plain, plain_len);
    explicit_bzero(g->plain, plain_len);
    drain_outputs(g);
}

/* The gossip address announced: --advertise (with the --gossip port if it has none), else
 * the bound address, which must then not be a wildcard. */
static int self_gossip_addr(gossip_t *g, const llmrelay_config_t *cfg, char *out, size_t cap, char *err, size_t errlen)
{
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    int rc = uv_udp_getsockname(&g->udp, (struct sockaddr *)&bound, &blen);
    if (rc != 0) {
        snprintf(err, errlen, "--gossip %s: %s", cfg->gossip, uv_strerror(rc));
        return -EINVAL;
    }
    int port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                           : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    const char *adv = cfg->advertise;
    int n;
    if (adv != NULL && adv[0] != '\0') {
        size_t colons = 0;
        for (const char *p = adv; *p != '\0'; p++)
            colons += *p == ':';
        if (adv[0] == '[')
            n = strstr(adv, "]:") != NULL ? snprintf(out, cap, "%s", adv) : snprintf(out, cap, "%s:%d", adv, port);
        else if (colons == 1)
            n = snprintf(out, cap, "%s", adv);
        else if (colons == 0)
            n = snprintf(out, cap, "%s:%d", adv, port);
        else
            n = snprintf(out, cap, "[%s]:%d", adv, port);
    } else {
        bool wildcard =
            bound.ss_family == AF_INET6
                ? memcmp(&((struct sockaddr_in6 *)&bound)->sin6_addr, &in6addr_any, sizeof(in6addr_any)) == 0
                : ((struct sockaddr_in *)&bound)->sin_addr.s_addr == htonl(INADDR_ANY);
        if (wildcard) {
            snprintf(err, errlen, "--gossip %s is a wildcard address: give --advertise ADDR", cfg->gossip);
            return -EINVAL;
        }
        n = format_addr((struct sockaddr *)&bound, out, cap) == 0 ? 0 : -1;
    }
    if (n < 0 || (size_t)n >= cap) {
        snprintf(err, errlen, "--advertise: the gossip address is longer than %d bytes", SWIM_NAME_MAX - 1);
        return -EINVAL;
    }
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    gossip_t *g = h->data;
    if (--g->open_handles > 0)
        return;
    swim_destroy(g->swim);
    gossip_seal_free(g->seal);
    explicit_bzero(g, sizeof(*g));
    free(g);
}

static void close_handles(gossip_t *g)
{
    uv_udp_recv_stop(&g->udp);
    uv_timer_stop(&g->timer);
    uv_close((uv_handle_t *)&g->udp, on_closed);
    uv_close((uv_handle_t *)&g->timer, on_closed);
}

static int record_field(char *dst, const char *src, const char *what, char *err, size_t errlen)
{
    if (src == NULL)
        src = "";
    if (strlen(src) >= SWIM_NAME_MAX) {
        snprintf(err, errlen, "%s is longer than %d bytes (gossip records)", what, SWIM_NAME_MAX - 1);
        return -EINVAL;
    }
    snprintf(dst, SWIM_NAME_MAX, "%s", src);
    return 0;
}

int gossip_start(uv_loop_t *loop, const llmrelay_config_t *cfg, const uint8_t *key, size_t key_len, gossip_t **out,
                 char *err, size_t errlen)
{
    if (cfg->gossip == NULL) {
        snprintf(err, errlen, "gossip: no --gossip address");
        return -EINVAL;
    }
    gossip_t *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        snprintf(err, errlen, "gossip: out of memory");
        return -ENOMEM;
    }
    g->loop = loop;
    uint64_t boot_id = 0, seed = 0;
    if (RAND_bytes((unsigned char *)&boot_id, sizeof(boot_id)) != 1 ||
        RAND_bytes((unsigned char *)&seed, sizeof(seed)) != 1) {
        snprintf(err, errlen, "gossip: no randomness for the boot id");
        free(g);
        return -EIO;
    }
    int rc = gossip_seal_create(key, key_len, boot_id, 0, &g->seal);
    if (rc != 0) {
        snprintf(err, errlen, "gossip: cannot set up packet sealing (%s)", strerror(-rc));
        free(g);
        return rc;
    }
    struct sockaddr_storage bind_sa;
    if ((rc = resolve(g, cfg->gossip, &bind_sa)) != 0) {
        snprintf(err, errlen, "--gossip %s: not an ADDR:PORT", cfg->gossip);
        gossip_seal_free(g->seal);
        free(g);
        return -EINVAL;
    }
    uv_udp_init(loop, &g->udp);
    uv_timer_init(loop, &g->timer);
    g->udp.data = g->timer.data = g;
    g->open_handles = 2;
    if ((rc = uv_udp_bind(&g->udp, (const struct sockaddr *)&bind_sa, 0)) != 0) {
        snprintf(err, errlen, "--gossip %s: cannot bind: %s", cfg->gossip, uv_strerror(rc));
        close_handles(g);
        return rc;
    }
    swim_record_t self;
    memset(&self, 0, sizeof(self));
    if ((rc = record_field(self.name, cfg->name, "--name", err, errlen)) != 0 ||
        (rc = record_field(self.region, cfg->region, "--region", err, errlen)) != 0 ||
        (rc = record_field(self.peer_addr, cfg->peer_listen, "--peer-listen", err, errlen)) != 0 ||
        (rc = record_field(self.version, LLMRELAY_VERSION, "the version", err, errlen)) != 0 ||
        (rc = self_gossip_addr(g, cfg, self.gossip_addr, sizeof(self.gossip_addr), err, errlen)) != 0) {
        close_handles(g);
        return rc;
    }
    snprintf(g->self_name, sizeof(g->self_name), "%s", self.name);
    g->sender_id = ring_key_hash(self.name, strlen(self.name));
    swim_config_t scfg;
    swim_config_default(&scfg);
    uv_update_time(loop);
    uint64_t now = uv_now(loop);
    if ((g->swim = swim_create(&scfg, &self, seed, now)) == NULL) {
        snprintf(err, errlen, "gossip: cannot start membership (bad record or out of memory)");
        close_handles(g);
        return -EINVAL;
    }
    if ((rc = uv_udp_recv_start(&g->udp, on_alloc, on_recv)) != 0) {
        snprintf(err, errlen, "--gossip %s: %s", cfg->gossip, uv_strerror(rc));
        close_handles(g);
        return rc;
    }
    if (cfg->join != NULL && cfg->join[0] != '\0') {
        char *list = strdup(cfg->join);
        const char *seeds[GOSSIP_MAX_SEEDS];
        size_t n = 0;
        char *save = NULL;
        for (char *tok = list != NULL ? strtok_r(list, ",", &save) : NULL; tok != NULL && n < GOSSIP_MAX_SEEDS;
             tok = strtok_r(NULL, ",", &save))
            if (tok[0] != '\0' && strcmp(tok, self.gossip_addr) != 0)
                seeds[n++] = tok;
        rc = n > 0 ? swim_join(g->swim, now, seeds, n) : 0;
        free(list);
        if (rc != 0) {
            snprintf(err, errlen, "--join %s: an address is too long", cfg->join);
            close_handles(g);
            return rc;
        }
    }
    drain_outputs(g);
    uv_timer_start(&g->timer, on_tick, GOSSIP_TICK_MS, GOSSIP_TICK_MS);
    log_info("gossip on %s as %s (advertised %s)%s%s", cfg->gossip, self.name, self.gossip_addr,
             cfg->join != NULL ? ", joining " : "", cfg->join != NULL ? cfg->join : "");
    *out = g;
    return 0;
}

void gossip_leave(gossip_t *g)
{
    if (g == NULL || g->leaving)
        return;
    uint64_t now = uv_now(g->loop);
    g->leaving = true;
    g->leave_at = now;
    if (swim_leave(g->swim, now) != 0) {
        g->left = true;
        return;
    }
    swim_tick(g->swim, now);
    drain_outputs(g);
    log_info("gossip: leaving the cluster");
}

bool gossip_leave_done(const gossip_t *g)
{
    return g == NULL || !g->leaving || g->left;
}

void gossip_stop(gossip_t *g)
{
    if (g == NULL)
        return;
    drain_outputs(g);
    close_handles(g);
}

int gossip_cluster(gossip_t *g, const char *const *key_ids, size_t n_keys, admin_cluster_t *out)
{
    size_t n = swim_member_count(g->swim);
    admin_cluster_member_t *rows = calloc(n + 1, sizeof(*rows));
    const char **names = calloc(n + 1, sizeof(*names));
    size_t *row_of = calloc(n + 1, sizeof(*row_of));
    swim_member_info_t *info = calloc(n + 1, sizeof(*info));
    int rc = rows != NULL && names != NULL && row_of != NULL && info != NULL ? 0 : -ENOMEM;
    size_t n_rows = 0, n_ring = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (!swim_member_at(g->swim, i, &info[n_rows]))
            continue;
        const swim_member_info_t *m = &info[n_rows];
        admin_cluster_member_t *r = &rows[n_rows];
        snprintf(r->name, sizeof(r->name), "%s", m->rec.name);
        snprintf(r->region, sizeof(r->region), "%s", m->rec.region);
        snprintf(r->version, sizeof(r->version), "%s", m->rec.version);
        snprintf(r->gossip, sizeof(r->gossip), "%s", m->rec.gossip_addr);
        r->status = status_name(m->status);
        r->keys_owned = 0;
        if (m->status == SWIM_ALIVE || m->status == SWIM_SUSPECT) {
            names[n_ring] = info[n_rows].rec.name;
            row_of[n_ring++] = n_rows;
        }
        n_rows++;
    }
    ring_t *ring = NULL;
    if (rc == 0 && n_ring > 0 && ring_create(names, n_ring, &ring) != 0) {
        for (size_t i = 0; i < n_rows; i++)
            rows[i].keys_owned = -1; /* unknown rather than wrong */
        ring = NULL;
    }
    for (size_t k = 0; ring != NULL && k < n_keys; k++) {
        int owner = ring_owner(ring, key_ids[k], strlen(key_ids[k]));
        if (owner >= 0 && (size_t)owner < n_ring)
            rows[row_of[owner]].keys_owned++;
    }
    ring_destroy(ring);
    free(names);
    free(row_of);
    free(info);
    if (rc != 0) {
        free(rows);
        return rc;
    }
    gossip_seal_stats_t st;
    gossip_seal_get_stats(g->seal, &st);
    out->members = rows;
    out->n_members = n_rows;
    out->has_packets = true;
    out->sealed = st.sealed;
    out->opened = st.opened;
    out->malformed = st.malformed;
    out->forged = st.forged;
    out->replayed = st.replayed;
    out->too_old = st.too_old;
    return 0;
}
