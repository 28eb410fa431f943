/* gossip.c — SWIM membership on the main loop (see gossip.h).
 *
 * Thin glue: a repeating GOSSIP_TICK_MS timer calls swim_tick and then drains swim's
 * outbox (seal, resolve, uv_udp_try_send: UDP may drop, and so may we when the socket
 * buffer is full) and its events (log lines). Received datagrams are opened with
 * gossip_seal before swim sees them, so nothing unauthenticated reaches the state machine.
 * Events also bump the view version and call the view listener. Push-pull connections
 * (pp_*) are small state machines, each with its own deadline timer, counted in
 * open_handles so g is freed only after the last of them closed. The etcd registration
 * and discovery (etcd_*) are driven from the tick. Time given to swim is uv_now
 * (monotonic ms); wall-clock jumps do not disturb timeouts. */
#include "node/gossip.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "cluster/gossip_seal.h"
#include "cluster/pushpull_seal.h"
#include "cluster/ring.h"
#include "members.pb-c.h"
#include "cluster/swim.h"
#include "node/log.h"

#define GOSSIP_MAX_SEEDS 64
#define GOSSIP_RESOLVE_CACHE 16
#define GOSSIP_SENDER_IDLE_MS (10ULL * 60 * 1000) /* forget replay windows of silent senders */
#define GOSSIP_PP_TIMEOUT_MS 2000                 /* a push-pull connection's whole life, either side */
#define GOSSIP_PP_MAX_IN 4                        /* concurrent inbound push-pull connections */
#define GOSSIP_PP_MAX_OUT 3                       /* concurrent outbound ones */
#define GOSSIP_PP_SEED_RETRY_MS 2000              /* while alone: push-pull with a seed this often */
#define GOSSIP_PP_READ_CHUNK 65536
#define GOSSIP_ETCD_KEEPALIVE_MS 3000
#define GOSSIP_ETCD_RETRY_MS 2000
#define GOSSIP_ETCD_DISCOVER_MS 2000
/* Request: client nonce + frame; reply: hello then frame. Bounds the bytes buffered. */
#define GOSSIP_PP_MAX_BUFFER (PUSHPULL_HELLO_LEN + PUSHPULL_NONCE_LEN + PUSHPULL_OVERHEAD + PUSHPULL_MAX_PLAIN)

typedef enum pp_stage { PP_CONNECTING, PP_WAIT_HELLO, PP_WAIT_REQUEST, PP_WAIT_REPLY, PP_DONE } pp_stage_t;

/* One push-pull TCP connection (either side); freed once both handles are closed. */
typedef struct pp_conn {
    gossip_t *g;
    struct pp_conn *next;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect;
    int open; /* handles not closed yet */
    bool outbound, closing;
    pp_stage_t stage;
    uint8_t s_nonce[PUSHPULL_NONCE_LEN], c_nonce[PUSHPULL_NONCE_LEN], key[PUSHPULL_KEY_LEN];
    uint8_t *buf; /* bytes received and not consumed yet */
    size_t len, cap;
    char peer[SWIM_NAME_MAX]; /* the address dialled, or the remote address */
} pp_conn_t;

typedef struct pp_write {
    uv_write_t req;
    pp_conn_t *c;
    bool close_after; /* the server's reply: the exchange is over once it is out */
    size_t len;
    uint8_t data[];
} pp_write_t;

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
    int open_handles; /* own handles + one per push-pull connection */
    bool stopping;
    uv_tcp_t tcp; /* push-pull listener, same address as udp */
    uint8_t cluster_key[PUSHPULL_KEY_LEN];
    pp_conn_t *conns;
    unsigned n_in, n_out;
    gossip_pushpull_stats_t pp;
    uint64_t pp_drops_logged;
    char (*seeds)[SWIM_NAME_MAX];      /* --join and etcd seeds: push-pull targets while alone */
    char (*join_seeds)[SWIM_NAME_MAX]; /* --join alone */
    size_t n_join_seeds;
    etcd_client_t *etcd; /* NULL: no discovery */
    char etcd_key[512], etcd_members[512];
    int64_t lease_id, wall_ms;
    bool registered, reg_busy, keepalive_busy, discover_busy, revoke_busy, revoked;
    uint64_t next_register, next_keepalive, next_discover;
    size_t n_seeds, next_seed;
    uint64_t next_seed_pp;
    uint8_t tcp_rx[GOSSIP_PP_READ_CHUNK];
    uint64_t drops_logged;
    char self_name[SWIM_NAME_MAX];
    uint64_t view_version;    /* bumped on status / address changes and forgotten members */
    size_t last_member_count; /* to notice members swim forgot (reclaimed) */
    void (*listener)(void *data, const char *name, int status);
    void *listener_data;
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

static void pp_start(gossip_t *g, const char *addr);
static void pp_seeds_when_alone(gossip_t *g, uint64_t now);
static void etcd_tick(gossip_t *g, uint64_t now);

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
        if (ev.kind != SWIM_EVENT_PUSHPULL)
            g->view_version++;
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
            pp_start(g, r->gossip_addr);
            break;
        }
        if (ev.kind != SWIM_EVENT_PUSHPULL && ev.kind != SWIM_EVENT_UPDATE && g->listener != NULL)
            g->listener(g->listener_data, r->name, (int)ev.member.status);
    }
    size_t count = swim_member_count(g->swim);
    if (count != g->last_member_count) {
        g->last_member_count = count;
        g->view_version++;
    }
}

static void on_tick(uv_timer_t *t)
{
    gossip_t *g = t->data;
    uint64_t now = uv_now(g->loop);
    swim_tick(g->swim, now);
    drain_outputs(g);
    pp_seeds_when_alone(g, now);
    etcd_tick(g, now);
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

/* --- push-pull over TCP ---------------------------------------------------------------
 * The server (accepting side) sends a hello with its nonce; the client answers with its
 * nonce and its sealed state; the server merges it and answers with its own state (taken
 * before the merge); the client merges that. See cluster/pushpull_seal.h for the framing. */

static void gossip_release(gossip_t *g);

static void pp_drop(pp_conn_t *c, const char *why, uint64_t *counter)
{
    gossip_t *g = c->g;
    (*counter)++;
    uint64_t n = ++g->pp_drops_logged;
    if (n <= 16 || (n & (n - 1)) == 0) /* bounded: the first 16, then the 32nd, 64th... */
        log_warn("gossip: push-pull %s %s dropped (%s); %llu dropped so far", c->outbound ? "with" : "from", c->peer,
                 why, (unsigned long long)n);
}

static void pp_closed(uv_handle_t *h)
{
    pp_conn_t *c = h->data;
    if (--c->open > 0)
        return;
    gossip_t *g = c->g;
    free(c->buf);
    free(c);
    gossip_release(g);
}

static void pp_close(pp_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    gossip_t *g = c->g;
    for (pp_conn_t **pp = &g->conns; *pp != NULL; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (c->outbound)
        g->n_out--;
    else
        g->n_in--;
    pushpull_wipe(c->key, sizeof(c->key));
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, pp_closed);
    uv_close((uv_handle_t *)&c->tcp, pp_closed);
}

static void pp_on_timeout(uv_timer_t *t)
{
    pp_conn_t *c = t->data;
    pp_drop(c, "timed out", &c->g->pp.timeouts);
    pp_close(c);
}

/* A new connection object with its timer running; counted in open_handles and conns. */
static pp_conn_t *pp_new(gossip_t *g, bool outbound)
{
    pp_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->g = g;
    c->outbound = outbound;
    uv_tcp_init(g->loop, &c->tcp);
    uv_timer_init(g->loop, &c->timer);
    c->tcp.data = c->timer.data = c->connect.data = c;
    c->open = 2;
    g->open_handles++;
    c->next = g->conns;
    g->conns = c;
    if (outbound)
        g->n_out++;
    else
        g->n_in++;
    uv_timer_start(&c->timer, pp_on_timeout, GOSSIP_PP_TIMEOUT_MS, 0);
    return c;
}

static void pp_on_write(uv_write_t *req, int status)
{
    pp_write_t *w = (pp_write_t *)req;
    pp_conn_t *c = w->c;
    bool close_after = w->close_after;
    free(w);
    if (c->closing)
        return;
    if (status != 0) {
        pp_drop(c, uv_strerror(status), &c->g->pp.failed);
        pp_close(c);
    } else if (close_after) {
        pp_close(c);
    }
}

/* Queues prefix[0..plen) + our state sealed for dir. Returns 0 or a negative error. */
static int pp_send_state(pp_conn_t *c, const uint8_t *prefix, size_t plen, uint32_t dir)
{
    gossip_t *g = c->g;
    size_t need = swim_pushpull_size(g->swim);
    if (need > PUSHPULL_MAX_PLAIN)
        return -EMSGSIZE;
    uint8_t *plain = malloc(need > 0 ? need : 1);
    pp_write_t *w = malloc(sizeof(*w) + plen + need + PUSHPULL_OVERHEAD);
    long n = plain != NULL ? swim_pushpull_state(g->swim, plain, need) : -ENOMEM;
    size_t flen = 0;
    int rc = w == NULL ? -ENOMEM : n < 0 ? (int)n : 0;
    if (rc == 0) {
        if (plen > 0)
            memcpy(w->data, prefix, plen);
        rc = pushpull_seal(c->key, dir, plain, (size_t)n, w->data + plen, need + PUSHPULL_OVERHEAD, &flen);
    }
    free(plain);
    if (rc != 0) {
        free(w);
        return rc;
    }
    w->c = c;
    w->close_after = dir == PUSHPULL_DIR_REPLY;
    w->len = plen + flen;
    uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)w->len);
    if ((rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, pp_on_write)) != 0) {
        free(w);
        return rc;
    }
    return 0;
}

/* Opens a whole frame into *plain (malloc'd). 0, or the drop already counted (and -1). */
static int pp_open_frame(pp_conn_t *c, const uint8_t *frame, size_t flen, uint32_t dir, uint8_t **plain_out,
                         size_t *got)
{
    gossip_t *g = c->g;
    size_t plen = flen - PUSHPULL_OVERHEAD;
    uint8_t *plain = malloc(plen > 0 ? plen : 1);
    if (plain == NULL) {
        pp_drop(c, "out of memory", &g->pp.failed);
        return -1;
    }
    int rc = pushpull_open(c->key, dir, frame, flen, plain, plen, got);
    if (rc != 0) {
        free(plain);
        pp_drop(c, rc == -EBADMSG ? "forged, replayed or another cluster key" : "malformed",
                rc == -EBADMSG ? &g->pp.forged : &g->pp.malformed);
        return -1;
    }
    *plain_out = plain;
    return 0;
}

/* Merges an opened state (and frees it). 0, or the drop already counted (and -1). */
static int pp_merge(pp_conn_t *c, uint8_t *plain, size_t got)
{
    gossip_t *g = c->g;
    int rc;
    uint64_t now = uv_now(g->loop);
    size_t before = swim_member_count(g->swim);
    /* the state's header: version, type, be32 member count */
    unsigned received =
        got >= 6 ? (unsigned)plain[2] << 24 | (unsigned)plain[3] << 16 | (unsigned)plain[4] << 8 | plain[5] : 0;
    rc = swim_pushpull_merge(g->swim, now, plain, got);
    free(plain);
    if (rc != 0) {
        pp_drop(c, "bad member state", &g->pp.malformed);
        return -1;
    }
    g->pp.ok++;
    size_t after = swim_member_count(g->swim);
    if (c->outbound)
        log_info("gossip: push-pull with %s: received %u members, %zu new (%zu known)", c->peer, received,
                 after - before, after);
    else if (after != before)
        log_info("gossip: push-pull from %s: received %u members, %zu new (%zu known)", c->peer, received,
                 after - before, after);
    drain_outputs(g);
    return 0;
}

/* Runs the state machine over the bytes buffered so far. */
static void pp_process(pp_conn_t *c)
{
    gossip_t *g = c->g;
    if (c->stage == PP_WAIT_HELLO) {
        if (c->len < PUSHPULL_HELLO_LEN)
            return;
        if (pushpull_hello_parse(c->buf, c->s_nonce) != 0) {
            pp_drop(c, "not a push-pull hello", &g->pp.malformed);
            pp_close(c);
            return;
        }
        memmove(c->buf, c->buf + PUSHPULL_HELLO_LEN, c->len - PUSHPULL_HELLO_LEN);
        c->len -= PUSHPULL_HELLO_LEN;
        int rc = RAND_bytes(c->c_nonce, sizeof(c->c_nonce)) == 1 ? 0 : -EIO;
        if (rc == 0)
            rc = pushpull_derive(g->cluster_key, sizeof(g->cluster_key), c->s_nonce, c->c_nonce, c->key);
        if (rc == 0)
            rc = pp_send_state(c, c->c_nonce, sizeof(c->c_nonce), PUSHPULL_DIR_REQUEST);
        if (rc != 0) {
            pp_drop(c, strerror(-rc), &g->pp.failed);
            pp_close(c);
            return;
        }
        c->stage = PP_WAIT_REPLY;
    }
    size_t skip = c->stage == PP_WAIT_REQUEST ? PUSHPULL_NONCE_LEN : 0;
    if (c->stage != PP_WAIT_REQUEST && c->stage != PP_WAIT_REPLY)
        return;
    if (c->len < skip)
        return;
    long flen = pushpull_frame_len(c->buf + skip, c->len - skip, PUSHPULL_MAX_PLAIN);
    if (flen < 0 || (flen > 0 && c->len > skip + (size_t)flen)) {
        pp_drop(c, flen == -EMSGSIZE ? "oversized" : "malformed", &g->pp.malformed);
        pp_close(c);
        return;
    }
    if (flen == 0 || c->len < skip + (size_t)flen)
        return;
    if (c->stage == PP_WAIT_REQUEST) {
        memcpy(c->c_nonce, c->buf, PUSHPULL_NONCE_LEN);
        int rc = pushpull_derive(g->cluster_key, sizeof(g->cluster_key), c->s_nonce, c->c_nonce, c->key);
        if (rc != 0) {
            pp_drop(c, strerror(-rc), &g->pp.failed);
            pp_close(c);
            return;
        }
        /* verified first; then our state as it was before the merge (what the peer lacks) */
        uint8_t *plain = NULL;
        size_t got = 0;
        c->stage = PP_DONE;
        if (pp_open_frame(c, c->buf + skip, (size_t)flen, PUSHPULL_DIR_REQUEST, &plain, &got) != 0) {
            pp_close(c);
            return;
        }
        rc = pp_send_state(c, NULL, 0, PUSHPULL_DIR_REPLY);
        if (rc != 0) {
            free(plain);
            pp_drop(c, strerror(-rc), &g->pp.failed);
            pp_close(c);
            return;
        }
        if (pp_merge(c, plain, got) != 0)
            pp_close(c); /* uv_close cancels the reply's write */
        /* else the write callback closes the connection */
        c->len = 0;
        return;
    }
    uint8_t *plain = NULL;
    size_t got = 0;
    c->stage = PP_DONE;
    if (pp_open_frame(c, c->buf, (size_t)flen, PUSHPULL_DIR_REPLY, &plain, &got) == 0)
        (void)pp_merge(c, plain, got);
    c->len = 0;
    pp_close(c);
}

static void pp_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    pp_conn_t *c = h->data;
    *buf = uv_buf_init((char *)c->g->tcp_rx, sizeof(c->g->tcp_rx));
}

static void pp_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    pp_conn_t *c = s->data;
    (void)buf;
    if (c->closing || nread == 0)
        return;
    gossip_t *g = c->g;
    if (nread < 0) {
        if (c->stage != PP_DONE)
            pp_drop(c, nread == UV_EOF ? "closed early" : uv_strerror((int)nread),
                    c->outbound ? &g->pp.failed : &g->pp.malformed);
        pp_close(c);
        return;
    }
    if (c->stage == PP_DONE || c->len + (size_t)nread > GOSSIP_PP_MAX_BUFFER) {
        pp_drop(c, "too much data", &g->pp.malformed);
        pp_close(c);
        return;
    }
    if (c->len + (size_t)nread > c->cap) {
        size_t cap = c->cap > 0 ? c->cap : 4096;
        while (cap < c->len + (size_t)nread)
            cap *= 2;
        if (cap > GOSSIP_PP_MAX_BUFFER)
            cap = GOSSIP_PP_MAX_BUFFER;
        uint8_t *nb = realloc(c->buf, cap);
        if (nb == NULL) {
            pp_drop(c, "out of memory", &g->pp.failed);
            pp_close(c);
            return;
        }
        c->buf = nb;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, g->tcp_rx, (size_t)nread);
    c->len += (size_t)nread;
    pp_process(c);
}

static void pp_on_connect(uv_connect_t *req, int status)
{
    pp_conn_t *c = req->data;
    if (c->closing || status == UV_ECANCELED)
        return;
    if (status != 0) {
        c->g->pp.failed++;
        log_debug("gossip: push-pull with %s: %s", c->peer, uv_strerror(status));
        pp_close(c);
        return;
    }
    c->stage = PP_WAIT_HELLO;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, pp_on_alloc, pp_on_read);
    if (rc != 0) {
        pp_drop(c, uv_strerror(rc), &c->g->pp.failed);
        pp_close(c);
    }
}

/* Starts a push-pull with the member at gossip address addr (bounded, never blocks). */
static void pp_start(gossip_t *g, const char *addr)
{
    if (g->stopping || g->leaving || addr[0] == '\0' || g->n_out >= GOSSIP_PP_MAX_OUT)
        return;
    swim_member_info_t self;
    if (swim_member_find(g->swim, g->self_name, &self) && strcmp(self.rec.gossip_addr, addr) == 0)
        return;
    for (pp_conn_t *c = g->conns; c != NULL; c = c->next)
        if (c->outbound && strcmp(c->peer, addr) == 0)
            return; /* one at a time per peer */
    struct sockaddr_storage sa;
    if (resolve(g, addr, &sa) != 0)
        return;
    pp_conn_t *c = pp_new(g, true);
    if (c == NULL)
        return;
    snprintf(c->peer, sizeof(c->peer), "%s", addr);
    c->stage = PP_CONNECTING;
    int rc = uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&sa, pp_on_connect);
    if (rc != 0) {
        g->pp.failed++;
        log_debug("gossip: push-pull with %s: %s", addr, uv_strerror(rc));
        pp_close(c);
    }
}

static void pp_on_connection(uv_stream_t *server, int status)
{
    gossip_t *g = server->data;
    if (status != 0 || g->stopping)
        return;
    bool over = g->n_in >= GOSSIP_PP_MAX_IN;
    pp_conn_t *c = pp_new(g, false);
    if (c == NULL)
        return;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        pp_close(c);
        return;
    }
    struct sockaddr_storage sa;
    int salen = sizeof(sa);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &salen) != 0 ||
        format_addr((struct sockaddr *)&sa, c->peer, sizeof(c->peer)) != 0)
        snprintf(c->peer, sizeof(c->peer), "?");
    if (over) {
        pp_drop(c, "too many connections", &g->pp.refused);
        pp_close(c);
        return;
    }
    c->stage = PP_WAIT_REQUEST;
    uint8_t hello[PUSHPULL_HELLO_LEN];
    pp_write_t *w = malloc(sizeof(*w) + sizeof(hello));
    int rc = w != NULL && RAND_bytes(c->s_nonce, sizeof(c->s_nonce)) == 1 ? 0 : -EIO;
    if (rc == 0) {
        pushpull_hello(c->s_nonce, w->data);
        w->c = c;
        w->close_after = false;
        w->len = sizeof(hello);
        uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)w->len);
        rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, pp_on_write);
    }
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&c->tcp, pp_on_alloc, pp_on_read);
    else
        free(w);
    if (rc != 0) {
        pp_drop(c, "cannot answer", &g->pp.failed);
        pp_close(c);
    }
}

/* While this node knows no other member: push-pull with the next seed now and then. */
static void pp_seeds_when_alone(gossip_t *g, uint64_t now)
{
    if (g->n_seeds == 0 || now < g->next_seed_pp || swim_member_count(g->swim) > 1 || g->leaving)
        return;
    g->next_seed_pp = now + GOSSIP_PP_SEED_RETRY_MS;
    pp_start(g, g->seeds[g->next_seed++ % g->n_seeds]);
}

static void set_seeds(gossip_t *g, const char *const *seeds, size_t n)
{
    char(*list)[SWIM_NAME_MAX] = calloc(n > 0 ? n : 1, sizeof(*list));
    if (list == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        snprintf(list[i], SWIM_NAME_MAX, "%s", seeds[i]);
    free(g->seeds);
    g->seeds = list;
    g->n_seeds = n;
    g->next_seed = 0;
}

/* --- discovery through etcd ---------------------------------------------------------
 * <prefix>members/<name> = MemberRegistration under a lease of GOSSIP_ETCD_TTL_S seconds,
 * kept alive every GOSSIP_ETCD_KEEPALIVE_MS and revoked on a graceful leave; a lost lease
 * (etcd restarted, partition longer than the TTL) is granted again and the key put again.
 * The list is read at start and every GOSSIP_ETCD_DISCOVER_MS while this node knows no
 * other live member; every other member listed becomes a seed (swim_join + push-pull).
 * At most one etcd request of each kind in flight; callbacks carry g and are cancelled by
 * gossip_stop (etcd_cancel_data). */

static void etcd_on_put(etcd_client_t *c, int status, int64_t revision, void *data)
{
    gossip_t *g = data;
    (void)c;
    (void)revision;
    g->reg_busy = false;
    if (status != 0) {
        log_warn("gossip: cannot register %s in etcd (%s); retrying", g->etcd_key, strerror(-status));
        return;
    }
    g->registered = true;
    log_info("gossip: registered %s in etcd (lease %lld, ttl %d s)", g->etcd_key, (long long)g->lease_id,
             GOSSIP_ETCD_TTL_S);
}

static void etcd_put_registration(gossip_t *g)
{
    swim_member_info_t self;
    if (!swim_member_find(g->swim, g->self_name, &self))
        return;
    Llmrelay__MemberRegistration m = LLMRELAY__MEMBER_REGISTRATION__INIT;
    m.name = self.rec.name;
    m.gossip_addr = self.rec.gossip_addr;
    m.peer_addr = self.rec.peer_addr;
    m.region = self.rec.region;
    m.version = self.rec.version;
    m.registered_ms = g->wall_ms;
    uint8_t buf[1024];
    size_t len = llmrelay__member_registration__get_packed_size(&m);
    if (len > sizeof(buf))
        return;
    llmrelay__member_registration__pack(&m, buf);
    if (etcd_put(g->etcd, (const uint8_t *)g->etcd_key, strlen(g->etcd_key), buf, len, g->lease_id, etcd_on_put, g) ==
        0)
        g->reg_busy = true;
}

static void etcd_on_grant(etcd_client_t *c, int status, int64_t lease_id, int64_t ttl_s, void *data)
{
    gossip_t *g = data;
    (void)c;
    (void)ttl_s;
    g->reg_busy = false;
    if (status != 0 || lease_id == 0) {
        log_warn("gossip: etcd lease for %s not granted (%s); retrying", g->etcd_key, strerror(-status));
        return;
    }
    g->lease_id = lease_id;
    if (!g->leaving) /* else etcd_tick revokes it */
        etcd_put_registration(g);
}

static void etcd_on_keepalive(etcd_client_t *c, int status, int64_t lease_id, int64_t ttl_s, void *data)
{
    gossip_t *g = data;
    (void)c;
    (void)lease_id;
    g->keepalive_busy = false;
    if (status == -ENOENT || (status == 0 && ttl_s <= 0)) {
        log_warn("gossip: etcd lease of %s lost; registering again", g->etcd_key);
        g->lease_id = 0;
        g->registered = false;
    }
}

static void etcd_on_revoke(etcd_client_t *c, int status, int64_t revision, void *data)
{
    gossip_t *g = data;
    (void)c;
    (void)revision;
    g->revoke_busy = false;
    g->revoked = true;
    if (status == 0)
        log_info("gossip: registration %s revoked", g->etcd_key);
    else
        log_warn("gossip: cannot revoke the etcd lease of %s (%s): it expires by itself", g->etcd_key,
                 strerror(-status));
}

static void etcd_on_range(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t n, bool more,
                          void *data)
{
    gossip_t *g = data;
    (void)c;
    (void)revision;
    (void)more;
    g->discover_busy = false;
    if (status != 0) {
        log_debug("gossip: cannot read %s from etcd (%s)", g->etcd_members, strerror(-status));
        return;
    }
    const char *seeds[GOSSIP_MAX_SEEDS];
    char addrs[GOSSIP_MAX_SEEDS][SWIM_NAME_MAX];
    size_t ns = 0;
    for (size_t i = 0; i < g->n_join_seeds && ns < GOSSIP_MAX_SEEDS; i++)
        seeds[ns++] = g->join_seeds[i];
    size_t found = 0;
    for (size_t i = 0; i < n && ns < GOSSIP_MAX_SEEDS; i++) {
        Llmrelay__MemberRegistration *m = llmrelay__member_registration__unpack(NULL, kvs[i].value_len, kvs[i].value);
        if (m == NULL)
            continue;
        if (m->name != NULL && strcmp(m->name, g->self_name) != 0 && m->gossip_addr != NULL &&
            m->gossip_addr[0] != '\0' && strlen(m->gossip_addr) < SWIM_NAME_MAX) {
            snprintf(addrs[found], SWIM_NAME_MAX, "%s", m->gossip_addr);
            seeds[ns++] = addrs[found++];
        }
        llmrelay__member_registration__free_unpacked(m, NULL);
    }
    if (found == 0 || swim_alive_count(g->swim) > 1 || g->leaving)
        return;
    log_info("gossip: etcd lists %zu other members; joining them", found);
    uint64_t now = uv_now(g->loop);
    if (swim_join(g->swim, now, seeds, ns) == 0) {
        set_seeds(g, seeds, ns);
        g->next_seed_pp = now;
        for (size_t i = 0; i < found && i < GOSSIP_PP_MAX_OUT; i++)
            pp_start(g, addrs[i]);
    }
    drain_outputs(g);
}

/* From the tick: registration, keepalive, discovery while alone. */
static void etcd_tick(gossip_t *g, uint64_t now)
{
    if (g->etcd == NULL || g->stopping)
        return;
    if (g->leaving) {
        if (g->lease_id != 0 && !g->revoke_busy && !g->revoked) {
            etcd_cancel_data(g->etcd, g); /* no keepalive or put racing the revoke */
            g->reg_busy = g->keepalive_busy = g->discover_busy = false;
            if (etcd_lease_revoke(g->etcd, g->lease_id, etcd_on_revoke, g) == 0)
                g->revoke_busy = true;
            else
                g->revoked = true;
        }
        return;
    }
    if (!g->reg_busy && now >= g->next_register) {
        g->next_register = now + GOSSIP_ETCD_RETRY_MS;
        if (g->lease_id == 0) {
            if (etcd_lease_grant(g->etcd, GOSSIP_ETCD_TTL_S, etcd_on_grant, g) == 0)
                g->reg_busy = true;
        } else if (!g->registered) {
            etcd_put_registration(g);
        }
    }
    if (g->lease_id != 0 && g->registered && !g->keepalive_busy && now >= g->next_keepalive) {
        g->next_keepalive = now + GOSSIP_ETCD_KEEPALIVE_MS;
        if (etcd_lease_keepalive(g->etcd, g->lease_id, etcd_on_keepalive, g) == 0)
            g->keepalive_busy = true;
    }
    if (!g->discover_busy && now >= g->next_discover && swim_alive_count(g->swim) <= 1) {
        g->next_discover = now + GOSSIP_ETCD_DISCOVER_MS;
        if (etcd_range_prefix(g->etcd, (const uint8_t *)g->etcd_members, strlen(g->etcd_members), 256, 0, etcd_on_range,
                              g) == 0)
            g->discover_busy = true;
    }
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

static void gossip_release(gossip_t *g)
{
    if (--g->open_handles > 0)
        return;
    swim_destroy(g->swim);
    gossip_seal_free(g->seal);
    free(g->seeds);
    free(g->join_seeds);
    explicit_bzero(g, sizeof(*g)); /* the cluster key included */
    free(g);
}

static void on_closed(uv_handle_t *h)
{
    gossip_release(h->data);
}

static void close_handles(gossip_t *g)
{
    g->stopping = true;
    while (g->conns != NULL)
        pp_close(g->conns);
    uv_udp_recv_stop(&g->udp);
    uv_timer_stop(&g->timer);
    uv_close((uv_handle_t *)&g->udp, on_closed);
    uv_close((uv_handle_t *)&g->timer, on_closed);
    uv_close((uv_handle_t *)&g->tcp, on_closed);
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

int gossip_start(uv_loop_t *loop, const llmrelay_config_t *cfg, const uint8_t *key, size_t key_len, etcd_client_t *etcd,
                 gossip_t **out, char *err, size_t errlen)
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
    uv_tcp_init(loop, &g->tcp);
    g->udp.data = g->timer.data = g->tcp.data = g;
    g->open_handles = 3;
    memcpy(g->cluster_key, key, sizeof(g->cluster_key));
    if ((rc = uv_udp_bind(&g->udp, (const struct sockaddr *)&bind_sa, 0)) != 0) {
        snprintf(err, errlen, "--gossip %s: cannot bind: %s", cfg->gossip, uv_strerror(rc));
        close_handles(g);
        return rc;
    }
    /* push-pull: TCP on the very address the UDP socket got (its port, if --gossip said 0) */
    struct sockaddr_storage udp_sa;
    int udp_len = sizeof(udp_sa);
    if ((rc = uv_udp_getsockname(&g->udp, (struct sockaddr *)&udp_sa, &udp_len)) != 0 ||
        (rc = uv_tcp_bind(&g->tcp, (const struct sockaddr *)&udp_sa, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&g->tcp, 16, pp_on_connection)) != 0) {
        snprintf(err, errlen, "--gossip %s: cannot listen on TCP (push-pull): %s", cfg->gossip, uv_strerror(rc));
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
    g->view_version = 1;
    g->sender_id = ring_key_hash(self.name, strlen(self.name));
    swim_config_t scfg;
    swim_config_default(&scfg);
    /* Hidden test knob (not a flag): a short push-pull interval for the e2e tests. */
    const char *pp_env = getenv("LLMRELAY_GOSSIP_PUSHPULL_MS");
    if (pp_env != NULL && atoi(pp_env) >= 100)
        scfg.pushpull_interval_ms = (uint32_t)atoi(pp_env);
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
        if (rc == 0 && n > 0) {
            set_seeds(g, seeds, n);
            g->join_seeds = g->seeds != NULL ? calloc(n, sizeof(*g->join_seeds)) : NULL;
            if (g->join_seeds != NULL) {
                memcpy(g->join_seeds, g->seeds, n * sizeof(*g->join_seeds));
                g->n_join_seeds = n;
            }
            g->next_seed_pp = now; /* the first push-pull with a seed, right away */
        }
        free(list);
        if (rc != 0) {
            snprintf(err, errlen, "--join %s: an address is too long", cfg->join);
            close_handles(g);
            return rc;
        }
    }
    if (etcd != NULL) {
        int kn = snprintf(g->etcd_members, sizeof(g->etcd_members), "%smembers/",
                          cfg->etcd_prefix != NULL ? cfg->etcd_prefix : "/llmrelay/");
        int kk = snprintf(g->etcd_key, sizeof(g->etcd_key), "%s%s", g->etcd_members, self.name);
        if (kn > 0 && (size_t)kn < sizeof(g->etcd_members) && kk > 0 && (size_t)kk < sizeof(g->etcd_key))
            g->etcd = etcd;
        else
            log_warn("gossip: --etcd-prefix too long: not registering in etcd");
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        g->wall_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    drain_outputs(g);
    pp_seeds_when_alone(g, now);
    etcd_tick(g, now);
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
    etcd_tick(g, now);
    log_info("gossip: leaving the cluster");
}

bool gossip_leave_done(const gossip_t *g)
{
    /* the etcd revoke is waited for too, within the same bound */
    return g == NULL || !g->leaving ||
           (g->left && (g->etcd == NULL || !g->revoke_busy || uv_now(g->loop) - g->leave_at >= GOSSIP_LEAVE_MAX_MS));
}

void gossip_stop(gossip_t *g)
{
    if (g == NULL)
        return;
    g->stopping = true;
    drain_outputs(g);
    if (g->etcd != NULL)
        etcd_cancel_data(g->etcd, g);
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

size_t gossip_view(const gossip_t *g, gossip_peer_t *out, size_t max)
{
    size_t n = swim_member_count(g->swim), w = 0;
    for (size_t i = 0; i < n && w < max; i++) {
        swim_member_info_t m;
        if (!swim_member_at(g->swim, i, &m))
            continue;
        gossip_peer_t *p = &out[w++];
        memset(p, 0, sizeof(*p));
        snprintf(p->name, sizeof(p->name), "%s", m.rec.name);
        snprintf(p->peer_addr, sizeof(p->peer_addr), "%s", m.rec.peer_addr);
        snprintf(p->region, sizeof(p->region), "%.*s", (int)sizeof(p->region) - 1, m.rec.region);
        p->status = (int)m.status;
        p->self = strcmp(m.rec.name, g->self_name) == 0;
    }
    return w;
}

uint64_t gossip_view_version(const gossip_t *g)
{
    return g->view_version;
}

void gossip_set_listener(gossip_t *g, void (*cb)(void *data, const char *name, int status), void *data)
{
    g->listener = cb;
    g->listener_data = cb != NULL ? data : NULL;
}

const char *gossip_self_name(const gossip_t *g)
{
    return g->self_name;
}

void gossip_pushpull_stats(const gossip_t *g, gossip_pushpull_stats_t *out)
{
    *out = g->pp;
}
