/* test_upstream.c — the upstream dispatch, the proxy-environment rules, and the HTTP/1.1
 * backend (upstream_h1.c) on a real loop.
 *
 * upstream_proxy_applies is checked against a table of environments (variables set and
 * unset in the test). The h1 backend talks to a tiny HTTP/1.1 server on 127.0.0.1 that
 * lives in the same uv loop and answers by path: content-length, chunked, SSE with delays,
 * cut answers, Connection: close, 204, interim 1xx answers, split heads, HTTP/1.0,
 * oversized heads; it counts accepted connections so keep-alive reuse is visible, and
 * upstream_h1_idle_count shows what the pool keeps. The curl backend is not linked: a stub stands in for it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <signal.h>
#include <h2o.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>
#include <uv.h>

#include "node/server.h"
#include "node/upstream.h"
#include "node/upstream_h1.h"
#include "node/upstream_impl.h"

/* ---- curl backend stub -------------------------------------------------------------- */

static int curl_calls;

int upstream_curl_start(struct worker *w, const upstream_request_t *req, const upstream_cbs_t *cbs, void *data,
                        upstream_t **out)
{
    (void)w, (void)req, (void)cbs, (void)data, (void)out;
    curl_calls++;
    return -ENOTSUP;
}

/* ---- proxy environment -------------------------------------------------------------- */

static const char *const proxy_vars[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                                         "all_proxy",  "ALL_PROXY",  "no_proxy",    "NO_PROXY"};

static void env_clear(void)
{
    for (size_t i = 0; i < sizeof(proxy_vars) / sizeof(proxy_vars[0]); i++)
        unsetenv(proxy_vars[i]);
}

typedef struct proxy_case {
    const char *env; /* "NAME=value;NAME=value" */
    const char *url;
    bool expect;
} proxy_case_t;

static void env_apply(const char *spec)
{
    char buf[512];
    env_clear();
    snprintf(buf, sizeof(buf), "%s", spec);
    for (char *save = NULL, *kv = strtok_r(buf, ";", &save); kv != NULL; kv = strtok_r(NULL, ";", &save)) {
        char *eq = strchr(kv, '=');
        assert_non_null(eq);
        *eq = '\0';
        setenv(kv, eq + 1, 1);
    }
}

static void test_proxy_applies(void **state)
{
    (void)state;
    static const proxy_case_t cases[] = {
        {"", "http://example.com/v1", false},
        {"", "https://example.com/v1", false},
        /* curl ignores uppercase HTTP_PROXY */
        {"HTTP_PROXY=http://p:3128", "http://example.com/", false},
        {"HTTP_PROXY=http://p:3128", "https://example.com/", false},
        {"http_proxy=http://p:3128", "http://example.com/", true},
        {"http_proxy=http://p:3128", "https://example.com/", false},
        {"HTTPS_PROXY=http://p:3128", "https://example.com/", true},
        {"HTTPS_PROXY=http://p:3128", "http://example.com/", false},
        {"https_proxy=http://p:3128", "https://example.com/", true},
        {"ALL_PROXY=socks5://p:1080", "http://example.com/", true},
        {"all_proxy=http://p:3128", "https://example.com/", true},
        /* empty means unset */
        {"http_proxy=", "http://example.com/", false},
        {"http_proxy=;ALL_PROXY=http://p", "http://example.com/", true},
        {"ftp_proxy=http://p", "ftp://example.com/", false},
        {"http_proxy=http://p", "ftp://example.com/", false},
        /* no_proxy */
        {"http_proxy=http://p;no_proxy=*", "http://example.com/", false},
        {"http_proxy=http://p;no_proxy=*,foo", "http://example.com/", true},
        {"http_proxy=http://p;no_proxy=example.com", "http://example.com:8080/v1", false},
        {"http_proxy=http://p;no_proxy=example.com", "http://www.example.com/", false},
        {"http_proxy=http://p;no_proxy=example.com", "http://nonexample.com/", true},
        {"http_proxy=http://p;no_proxy=example.com", "http://EXAMPLE.Com/", false},
        {"http_proxy=http://p;no_proxy=example.com", "http://example.com./", false},
        {"http_proxy=http://p;no_proxy=example.com.", "http://a.example.com/", false},
        {"http_proxy=http://p;no_proxy=.example.com", "http://example.com/", false},
        {"http_proxy=http://p;no_proxy=.example.com", "http://a.b.example.com/x?y", false},
        {"http_proxy=http://p;no_proxy=.example.com", "http://example.org/", true},
        {"http_proxy=http://p;no_proxy=foo.com,, example.com", "http://example.com/", false},
        {"http_proxy=http://p;no_proxy=foo.com example.com", "http://example.com/", false},
        {"http_proxy=http://p;no_proxy=example.com", "http://user:pw@example.com/", false},
        {"http_proxy=http://p;no_proxy=pw", "http://user:pw@example.com/", true},
        {"http_proxy=http://p;no_proxy=localhost,10.0.0.0/8 ,192.168.1.5", "http://10.1.2.3:8000/v1", false},
        {"http_proxy=http://p;no_proxy=localhost,10.0.0.0/8 ,192.168.1.5", "http://11.1.2.3/", true},
        {"http_proxy=http://p;no_proxy=localhost,10.0.0.0/8 ,192.168.1.5", "http://192.168.1.5/", false},
        {"http_proxy=http://p;no_proxy=localhost,10.0.0.0/8 ,192.168.1.5", "http://192.168.1.6/", true},
        {"http_proxy=http://p;no_proxy=localhost,10.0.0.0/8 ,192.168.1.5", "http://localhost:1234/", false},
        {"http_proxy=http://p;no_proxy=127.0.0.1", "http://127.0.0.1:9/", false},
        {"http_proxy=http://p;no_proxy=127.0.0.0/8", "http://127.8.9.1/", false},
        {"http_proxy=http://p;no_proxy=127.0.0.0/33", "http://127.0.0.1/", true},
        {"http_proxy=http://p;no_proxy=0.0.1", "http://127.0.0.1/", true}, /* no string tail match for IPs */
        {"http_proxy=http://p;no_proxy=::1", "http://[::1]:8000/", false},
        {"http_proxy=http://p;no_proxy=fe80::/10", "http://[fe80::1]/", false},
        {"http_proxy=http://p;no_proxy=fe80::/10", "http://[fd00::1]/", true},
        {"http_proxy=http://p;no_proxy=2001:db8::/33", "http://[2001:db8:7fff::1]/", false},
        {"http_proxy=http://p;no_proxy=2001:db8::/33", "http://[2001:db8:8000::1]/", true},
        /* NO_PROXY when no_proxy is unset or empty */
        {"http_proxy=http://p;NO_PROXY=example.com", "http://example.com/", false},
        {"http_proxy=http://p;no_proxy=;NO_PROXY=example.com", "http://example.com/", false},
        {"http_proxy=http://p;no_proxy=other.com;NO_PROXY=example.com", "http://example.com/", true},
        {"https_proxy=http://p;no_proxy=example.com", "https://api.example.com/v1", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        env_apply(cases[i].env);
        bool got = upstream_proxy_applies(cases[i].url);
        if (got != cases[i].expect)
            fail_msg("case %zu: env '%s' url '%s': got %d, want %d", i, cases[i].env, cases[i].url, got,
                     cases[i].expect);
    }
    env_clear();
}

/* ---- in-test HTTP/1.1 server -------------------------------------------------------- */

typedef struct srv srv_t;

typedef struct srv_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    srv_t *srv;
    struct srv_conn *next, **pprev;
    char buf[16384];
    size_t len;
    int sse_step;
    int requests; /* on this connection */
    int handles;  /* open uv handles; freed at 0 */
    bool closing;
} srv_conn_t;

struct srv {
    uv_loop_t *loop;
    uv_tcp_t listen4, listen6;
    bool has6;
    int port;
    int accepted;
    int requests;
    srv_conn_t *conns;
    char last_head[4096];
    char last_body[4096];
    size_t last_body_len;
};

typedef struct srv_write {
    uv_write_t req;
    size_t len;
    char data[];
} srv_write_t;

static void srv_conn_handle_closed(uv_handle_t *h)
{
    srv_conn_t *c = h->data;
    if (--c->handles == 0)
        free(c);
}

static void srv_conn_close(srv_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    *c->pprev = c->next;
    if (c->next != NULL)
        c->next->pprev = c->pprev;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, srv_conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, srv_conn_handle_closed);
}

static void srv_on_write(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void srv_send(srv_conn_t *c, const char *data, size_t len)
{
    if (c->closing)
        return;
    srv_write_t *w = malloc(sizeof(*w) + len);
    assert_non_null(w);
    memcpy(w->data, data, len);
    w->len = len;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, srv_on_write) != 0)
        free(w);
}

static void srv_sends(srv_conn_t *c, const char *s)
{
    srv_send(c, s, strlen(s));
}

#define BIG_LEN 200000
static char big_body[BIG_LEN];

static void srv_on_sse_timer(uv_timer_t *t)
{
    srv_conn_t *c = t->data;
    char chunk[128];
    c->sse_step++;
    if (c->sse_step <= 2) {
        char ev[64];
        int n = snprintf(ev, sizeof(ev), "data: {\"n\":%d}\n\n", c->sse_step);
        int m = snprintf(chunk, sizeof(chunk), "%x\r\n%s\r\n", n, ev);
        srv_send(c, chunk, (size_t)m);
        uv_timer_start(&c->timer, srv_on_sse_timer, 20, 0);
    } else {
        srv_sends(c, "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n");
    }
}

static void srv_on_close_timer(uv_timer_t *t)
{
    srv_conn_close(t->data);
}

static void srv_on_split_timer(uv_timer_t *t)
{
    srv_conn_t *c = t->data;
    if (c->sse_step++ == 0) {
        srv_sends(c, "ication/json\r\nContent-Length: 11\r\n\r\n");
        uv_timer_start(&c->timer, srv_on_split_timer, 20, 0);
    } else {
        srv_sends(c, "{\"ok\":true}");
    }
}

static void srv_respond(srv_conn_t *c, const char *path)
{
    srv_t *s = c->srv;
    s->requests++;
    c->requests++;
    if ((strcmp(path, "/drop2") == 0 && c->requests > 1) || strcmp(path, "/dropall") == 0) {
        /* a kept-alive connection the server drops when reused, unanswered */
        srv_conn_close(c);
    } else if (strcmp(path, "/cl") == 0 || strcmp(path, "/drop2") == 0) {
        srv_sends(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}");
    } else if (strcmp(path, "/big") == 0) {
        char head[128];
        int n = snprintf(head, sizeof(head),
                         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", BIG_LEN);
        srv_send(c, head, (size_t)n);
        srv_send(c, big_body, BIG_LEN);
    } else if (strcmp(path, "/chunked") == 0) {
        srv_sends(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n");
    } else if (strcmp(path, "/sse") == 0) {
        srv_sends(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "f\r\ndata: {\"n\":0}\n\n\r\n");
        c->sse_step = 0;
        uv_timer_start(&c->timer, srv_on_sse_timer, 20, 0);
    } else if (strcmp(path, "/cut") == 0) {
        srv_sends(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n0123456789");
        srv_conn_close(c);
    } else if (strcmp(path, "/cutchunk") == 0) {
        /* a whole chunk, then the connection drops before the last chunk */
        srv_sends(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "f\r\ndata: {\"n\":0}\n\n\r\n");
        srv_conn_close(c);
    } else if (strcmp(path, "/cutmid") == 0) {
        srv_sends(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "f\r\ndata: {\"n");
        srv_conn_close(c);
    } else if (strcmp(path, "/close") == 0) {
        srv_sends(
            c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}");
        srv_conn_close(c);
    } else if (strcmp(path, "/204") == 0) {
        srv_sends(c, "HTTP/1.1 204 No Content\r\n\r\n");
    } else if (strcmp(path, "/bad") == 0) {
        srv_sends(c, "NOT HTTP AT ALL\r\n\r\n");
        srv_conn_close(c);
    } else if (strcmp(path, "/closelater") == 0) {
        /* a keep-alive answer, then the server closes the idle connection */
        srv_sends(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
        uv_timer_start(&c->timer, srv_on_close_timer, 20, 0);
    } else if (strcmp(path, "/continue") == 0) {
        srv_sends(c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    } else if (strcmp(path, "/split") == 0) {
        /* the head arrives in two pieces, the body in a third */
        srv_sends(c, "HTTP/1.1 200 OK\r\nContent-Type: appl");
        c->sse_step = 0;
        uv_timer_start(&c->timer, srv_on_split_timer, 20, 0);
    } else if (strcmp(path, "/http10") == 0) {
        srv_sends(c, "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}");
        srv_conn_close(c);
    } else if (strcmp(path, "/extra") == 0) {
        /* bytes after the announced length: the connection is out of step */
        srv_sends(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}XYZ");
    } else if (strcmp(path, "/bighead") == 0) {
        static char head[24000];
        int n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nX-Big: ");
        memset(head + n, 'x', 20000);
        n += 20000;
        n += snprintf(head + n, sizeof(head) - (size_t)n, "\r\nContent-Length: 2\r\n\r\n{}");
        srv_send(c, head, (size_t)n);
    } else if (strcmp(path, "/gzip") == 0) {
        srv_sends(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n");
    } else if (strcmp(path, "/badchunk") == 0) {
        srv_sends(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
    } else if (strcmp(path, "/abort") == 0) {
        /* how h2o aborts a chunked answer: a broken chunk header, then the connection closes */
        srv_sends(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n\r\n1\r\n");
        srv_conn_close(c);
    } else if (strcmp(path, "/trailer") == 0) {
        srv_sends(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-T: 1\r\n\r\n");
    } else if (strcmp(path, "/silent") == 0) {
        /* never answers */
    } else {
        srv_sends(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    }
}

/* Parses complete requests out of c->buf and answers them. */
static void srv_process(srv_conn_t *c)
{
    srv_t *s = c->srv;
    while (!c->closing) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (end == NULL)
            return;
        size_t head_len = (size_t)(end - c->buf) + 4;
        size_t body_len = 0;
        char *cl = memmem(c->buf, head_len, "Content-Length: ", 16);
        if (cl != NULL)
            body_len = strtoul(cl + 16, NULL, 10);
        if (c->len < head_len + body_len)
            return;
        size_t n = head_len < sizeof(s->last_head) - 1 ? head_len : sizeof(s->last_head) - 1;
        memcpy(s->last_head, c->buf, n);
        s->last_head[n] = '\0';
        s->last_body_len = body_len;
        memcpy(s->last_body, c->buf + head_len, body_len < sizeof(s->last_body) ? body_len : sizeof(s->last_body));
        char path[256] = "";
        sscanf(c->buf, "POST %255s HTTP/1.1", path);
        memmove(c->buf, c->buf + head_len + body_len, c->len - head_len - body_len);
        c->len -= head_len + body_len;
        srv_respond(c, path);
    }
}

static void srv_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    srv_conn_t *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static void srv_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    srv_conn_t *c = stream->data;
    (void)buf;
    if (nread < 0) {
        srv_conn_close(c);
        return;
    }
    c->len += (size_t)nread;
    srv_process(c);
}

static void srv_on_connection(uv_stream_t *listener, int status)
{
    srv_t *s = listener->data;
    assert_int_equal(status, 0);
    srv_conn_t *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    c->next = s->conns;
    c->pprev = &s->conns;
    if (s->conns != NULL)
        s->conns->pprev = &c->next;
    s->conns = c;
    assert_int_equal(uv_accept(listener, (uv_stream_t *)&c->tcp), 0);
    s->accepted++;
    uv_read_start((uv_stream_t *)&c->tcp, srv_alloc, srv_on_read);
}

/* v6: also listen on ::1 (same port). */
static void srv_start_on(srv_t *s, uv_loop_t *loop, bool v6)
{
    struct sockaddr_in sin;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    memset(s, 0, sizeof(*s));
    s->loop = loop;
    uv_tcp_init(loop, &s->listen4);
    s->listen4.data = s;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    assert_int_equal(uv_tcp_bind(&s->listen4, (struct sockaddr *)&sin, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listen4, 128, srv_on_connection), 0);
    uv_tcp_getsockname(&s->listen4, (struct sockaddr *)&ss, &len);
    s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    /* The same port on ::1, so that "localhost" works whichever address it resolves to. */
    struct sockaddr_in6 sin6;
    uv_tcp_init(loop, &s->listen6);
    s->listen6.data = s;
    uv_ip6_addr("::1", s->port, &sin6);
    s->has6 = v6 && uv_tcp_bind(&s->listen6, (struct sockaddr *)&sin6, UV_TCP_IPV6ONLY) == 0 &&
              uv_listen((uv_stream_t *)&s->listen6, 128, srv_on_connection) == 0;
}

static void srv_start(srv_t *s, uv_loop_t *loop)
{
    srv_start_on(s, loop, true);
}

static void srv_stop(srv_t *s)
{
    while (s->conns != NULL)
        srv_conn_close(s->conns);
    uv_close((uv_handle_t *)&s->listen4, NULL);
    uv_close((uv_handle_t *)&s->listen6, NULL);
}

/* ---- fixture: a worker with an h2o context ------------------------------------------ */

typedef struct fixture {
    worker_t w;
    server_t server;
    llmrelay_config_t cfg;
    srv_t srv;
    uv_timer_t tick;
} fixture_t;

static fixture_t *fx;

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static int setup(void **state)
{
    fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    env_clear();
    fx->cfg.upstream_connect_timeout_ms = 300;
    fx->cfg.upstream_first_byte_timeout_ms = 5000;
    fx->cfg.upstream_idle_timeout_ms = 5000;
    fx->server.cfg = &fx->cfg;
    h2o_config_init(&fx->server.globalconf);
    h2o_config_register_host(&fx->server.globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    assert_int_equal(uv_loop_init(&fx->w.loop), 0);
    fx->w.server = &fx->server;
    h2o_context_init(&fx->w.ctx, &fx->w.loop, &fx->server.globalconf);
    assert_int_equal(upstream_h1_worker_init(&fx->w), 0);
    srv_start(&fx->srv, &fx->w.loop);
    /* wakes the loop regularly so that run_until can check its deadline */
    uv_timer_init(&fx->w.loop, &fx->tick);
    uv_timer_start(&fx->tick, on_tick, 10, 10);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    upstream_h1_worker_dispose(&fx->w);
    assert_null(fx->w.upstream_h1);
    srv_stop(&fx->srv);
    uv_close((uv_handle_t *)&fx->tick, NULL);
    h2o_context_dispose(&fx->w.ctx);
    while (uv_run(&fx->w.loop, UV_RUN_DEFAULT) != 0)
        ;
    assert_int_equal(uv_loop_close(&fx->w.loop), 0);
    h2o_config_dispose(&fx->server.globalconf);
    free(fx);
    fx = NULL;
    return 0;
}

static bool run_until(bool *cond, uint64_t ms)
{
    uint64_t deadline = uv_hrtime() + ms * 1000000ull;
    while (!*cond && uv_hrtime() < deadline)
        uv_run(&fx->w.loop, UV_RUN_ONCE);
    return *cond;
}

static void run_for(uint64_t ms)
{
    bool never = false;
    run_until(&never, ms);
}

/* ---- a client of the upstream API --------------------------------------------------- */

typedef struct client {
    upstream_t *up;
    int sent, heads, dones, status, error;
    char content_type[64];
    char body[BIG_LEN + 1024];
    size_t body_len;
    int pieces;
    /* backpressure: writable answers false `refuse_every`-th time (0: never) or while `hold` */
    int refuse_every, writable_calls, refusals;
    bool hold;
    bool paused;
    int stop_after_pieces; /* on_body returns non-zero after this many pieces (0: never) */
    bool done;
    bool in_cb;
} client_t;

static void c_sent(void *data)
{
    client_t *c = data;
    assert_false(c->in_cb);
    assert_int_equal(c->heads, 0);
    c->sent++;
}

static void c_head(void *data, int status, const char *ct, size_t ct_len)
{
    client_t *c = data;
    assert_int_equal(c->sent, 1); /* on_sent comes first */
    c->heads++;
    c->status = status;
    snprintf(c->content_type, sizeof(c->content_type), "%.*s", (int)ct_len, ct != NULL ? ct : "");
}

static bool c_writable(void *data)
{
    client_t *c = data;
    c->writable_calls++;
    if (c->hold || (c->refuse_every > 0 && c->writable_calls % c->refuse_every == 0)) {
        c->refusals++;
        c->paused = true;
        return false;
    }
    return true;
}

static int c_body(void *data, const uint8_t *buf, size_t len)
{
    client_t *c = data;
    assert_false(c->paused);
    assert_int_equal(c->heads, 1);
    assert_true(c->body_len + len <= sizeof(c->body));
    memcpy(c->body + c->body_len, buf, len);
    c->body_len += len;
    c->pieces++;
    if (c->stop_after_pieces > 0 && c->pieces >= c->stop_after_pieces)
        return 1;
    return 0;
}

static void c_done(void *data, int error)
{
    client_t *c = data;
    c->dones++;
    c->error = error;
    c->done = true;
    c->up = NULL;
}

static const upstream_cbs_t client_cbs = {c_sent, c_head, c_writable, c_body, c_done};

static const char request_body[] = "{\"model\":\"m\",\"messages\":[]}";

static int start_path(client_t *c, const char *host, const char *path)
{
    char url[256];
    snprintf(url, sizeof(url), "http://%s:%d%s", host, fx->srv.port, path);
    upstream_request_t req = {url, "sk-test-123", false, (const uint8_t *)request_body, sizeof(request_body) - 1, UPSTREAM_AUTH_BEARER};
    c->in_cb = true; /* no callback may run inside start */
    int err = upstream_start(&fx->w, &req, &client_cbs, c, &c->up);
    c->in_cb = false;
    if (err == 0)
        assert_int_equal(c->sent + c->heads + c->dones, 0);
    return err;
}

static void fetch(client_t *c, const char *path)
{
    assert_int_equal(start_path(c, "127.0.0.1", path), 0);
    assert_string_equal(upstream_backend(c->up), "h1");
    assert_true(run_until(&c->done, 3000));
    assert_int_equal(c->dones, 1);
}

/* ---- h1 backend tests --------------------------------------------------------------- */

static void test_content_length(void **state)
{
    (void)state;
    client_t *c = calloc(1, sizeof(*c));
    fetch(c, "/cl");
    assert_int_equal(c->error, 0);
    assert_int_equal(c->sent, 1);
    assert_int_equal(c->status, 200);
    assert_string_equal(c->content_type, "application/json");
    assert_int_equal(c->body_len, 11);
    assert_memory_equal(c->body, "{\"ok\":true}", 11);
    /* what the upstream received */
    const char *h = fx->srv.last_head;
    assert_non_null(strstr(h, "POST /cl HTTP/1.1\r\n"));
    char host[64];
    snprintf(host, sizeof(host), "Host: 127.0.0.1:%d\r\n", fx->srv.port);
    assert_non_null(strstr(h, host));
    assert_non_null(strstr(h, "Authorization: Bearer sk-test-123\r\n"));
    assert_non_null(strstr(h, "Content-Type: application/json\r\n"));
    assert_non_null(strstr(h, "Accept: application/json\r\n"));
    assert_non_null(strstr(h, "User-Agent: llmrelay/" LLMRELAY_VERSION "\r\n"));
    assert_int_equal(fx->srv.last_body_len, sizeof(request_body) - 1);
    assert_memory_equal(fx->srv.last_body, request_body, sizeof(request_body) - 1);
    free(c);
}

static void test_chunked(void **state)
{
    (void)state;
    client_t *c = calloc(1, sizeof(*c));
    fetch(c, "/chunked");
    assert_int_equal(c->error, 0);
    assert_int_equal(c->body_len, 12);
    assert_memory_equal(c->body, "hello world!", 12);
    free(c);
}

static void test_sse_stream(void **state)
{
    (void)state;
    client_t *c = calloc(1, sizeof(*c));
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/sse", fx->srv.port);
    upstream_request_t req = {url, "sk-test-123", true, (const uint8_t *)request_body, sizeof(request_body) - 1, UPSTREAM_AUTH_BEARER};
    assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, c, &c->up), 0);
    assert_true(run_until(&c->done, 3000));
    assert_int_equal(c->error, 0);
    assert_string_equal(c->content_type, "text/event-stream");
    assert_non_null(strstr(fx->srv.last_head, "Accept: text/event-stream\r\n"));
    const char want[] = "data: {\"n\":0}\n\ndata: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n";
    assert_int_equal(c->body_len, sizeof(want) - 1);
    assert_memory_equal(c->body, want, sizeof(want) - 1);
    assert_true(c->pieces >= 3); /* the delays split the stream */
    free(c);
}

static void test_keepalive_reuse(void **state)
{
    (void)state;
    for (int i = 0; i < 5; i++) {
        client_t *c = calloc(1, sizeof(*c));
        fetch(c, i % 2 ? "/chunked" : "/cl");
        assert_int_equal(c->error, 0);
        free(c);
    }
    client_t *c = calloc(1, sizeof(*c));
    fetch(c, "/204");
    assert_int_equal(c->error, 0);
    assert_int_equal(c->status, 204);
    assert_int_equal(c->body_len, 0);
    free(c);
    assert_int_equal(fx->srv.requests, 6);
    assert_int_equal(fx->srv.accepted, 1);

    /* Concurrent requests open connections; the next round reuses them all. */
    enum { N = 16 };
    client_t *cs = calloc(N, sizeof(*cs));
    for (int round = 0; round < 2; round++) {
        memset(cs, 0, N * sizeof(*cs));
        for (int i = 0; i < N; i++)
            assert_int_equal(start_path(&cs[i], "127.0.0.1", "/cl"), 0);
        for (int i = 0; i < N; i++) {
            assert_true(run_until(&cs[i].done, 3000));
            assert_int_equal(cs[i].error, 0);
            assert_int_equal(cs[i].body_len, 11);
        }
        if (round == 0)
            assert_true(fx->srv.accepted <= N);
    }
    int after_two_rounds = fx->srv.accepted;
    assert_true(after_two_rounds <= N);
    free(cs);

    /* Connection: close is honoured: the next request needs a new connection. */
    c = calloc(1, sizeof(*c));
    fetch(c, "/close");
    assert_int_equal(c->error, 0);
    assert_int_equal(c->body_len, 2);
    free(c);
    int before = fx->srv.accepted;
    for (int i = 0; i < N; i++) {
        c = calloc(1, sizeof(*c));
        fetch(c, "/cl");
        free(c);
    }
    assert_int_equal(fx->srv.accepted, before); /* the other pooled connections serve */
}

static void test_stale_connection_retry(void **state)
{
    (void)state;
    client_t *c = calloc(1, sizeof(*c));
    fetch(c, "/drop2");
    assert_int_equal(c->error, 0);
    memset(c, 0, sizeof(*c));
    /* the pooled connection is dropped unanswered: sent once more on a new connection */
    fetch(c, "/drop2");
    assert_int_equal(c->error, 0);
    assert_int_equal(c->sent, 1);
    assert_int_equal(c->body_len, 11);
    assert_int_equal(fx->srv.accepted, 2);
    assert_int_equal(fx->srv.requests, 3);
    /* once only: a pooled connection dropped, then a fresh one dropped too: -EIO */
    memset(c, 0, sizeof(*c));
    int requests = fx->srv.requests;
    fetch(c, "/dropall");
    assert_int_equal(c->error, -EIO);
    assert_int_equal(c->heads, 0);
    assert_int_equal(fx->srv.accepted, 3);
    assert_int_equal(fx->srv.requests, requests + 2);
    /* a fresh connection failing is not retried */
    memset(c, 0, sizeof(*c));
    requests = fx->srv.requests;
    fetch(c, "/dropall");
    assert_int_equal(c->error, -EIO);
    assert_int_equal(fx->srv.accepted, 4);
    assert_int_equal(fx->srv.requests, requests + 1);
    free(c);
}

static void test_cut_responses(void **state)
{
    (void)state;
    client_t *c = calloc(1, sizeof(*c));
    fetch(c, "/cut");
    assert_int_equal(c->error, -EIO);
    assert_int_equal(c->status, 200);
    assert_int_equal(c->body_len, 10);
    memset(c, 0, sizeof(*c));
    fetch(c, "/cutchunk");
    assert_int_equal(c->error, -EIO);
    assert_int_equal(c->body_len, 15);
    memset(c, 0, sizeof(*c));
    fetch(c, "/cutmid");
    assert_int_equal(c->error, -EIO);
    memset(c, 0, sizeof(*c));
    fetch(c, "/bad");
    assert_int_equal(c->error, -EPROTO);
    assert_int_equal(c->heads, 0);
    /* the failed connections were not pooled: each request above had its own */
    int before = fx->srv.accepted;
    assert_int_equal(before, 4);
    memset(c, 0, sizeof(*c));
    fetch(c, "/cl");
    assert_int_equal(c->error, 0);
    assert_int_equal(fx->srv.accepted, before + 1);
    free(c);
}

static void test_connect_refused(void **state)
{
    (void)state;
    /* a port nobody listens on: bind one, then close it */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    close(fd);
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/chat/completions", ntohs(sin.sin_port));
    client_t *c = calloc(1, sizeof(*c));
    upstream_request_t req = {url, "sk-x", false, (const uint8_t *)request_body, sizeof(request_body) - 1, UPSTREAM_AUTH_BEARER};
    assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, c, &c->up), 0);
    assert_int_equal(c->dones, 0);
    assert_true(run_until(&c->done, 3000));
    assert_int_equal(c->error, -ECONNREFUSED);
    assert_int_equal(c->sent, 0);
    assert_int_equal(c->heads, 0);
    free(c);
}

static void test_connect_timeout(void **state)
{
    (void)state;
    /* A listener with a full accept queue drops further SYNs: the connect hangs. */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(lfd, 0), 0);
    getsockname(lfd, (struct sockaddr *)&sin, &len);
    int fillers[4];
    for (int i = 0; i < 4; i++) {
        fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fillers[i], (struct sockaddr *)&sin, sizeof(sin));
    }
    usleep(50000);
    uv_update_time(&fx->w.loop); /* timeouts count from the loop's cached time */
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", ntohs(sin.sin_port));
    client_t *c = calloc(1, sizeof(*c));
    upstream_request_t req = {url, "sk-x", false, (const uint8_t *)request_body, sizeof(request_body) - 1, UPSTREAM_AUTH_BEARER};
    uint64_t t0 = uv_hrtime();
    assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, c, &c->up), 0);
    assert_true(run_until(&c->done, 3000));
    uint64_t elapsed_ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(c->error, -ETIMEDOUT);
    if (elapsed_ms < 250 || elapsed_ms >= 2000)
        fail_msg("connect timed out after %llu ms, want about 300", (unsigned long long)elapsed_ms);
    for (int i = 0; i < 4; i++)
        close(fillers[i]);
    close(lfd);
    free(c);
}

static void test_named_host(void **state)
{
    (void)state;
    if (!fx->srv.has6)
        skip();
    client_t *c = calloc(1, sizeof(*c));
    assert_int_equal(start_path(c, "localhost", "/cl"), 0);
    assert_true(run_until(&c->done, 5000));
    assert_int_equal(c->error, 0);
    assert_int_equal(c->body_len, 11);
    char host[64];
    snprintf(host, sizeof(host), "Host: localhost:%d\r\n", fx->srv.port);
    assert_non_null(strstr(fx->srv.last_head, host));
    free(c);
}

static bool backpressure_resume_all(client_t *c, bool *progress)
{
    if (c->up != NULL && c->paused) {
        c->paused = false;
        upstream_resume(c->up);
        *progress = true;
    }
    return c->done;
}

static void test_backpressure(void **state)
{
    (void)state;
    for (int i = 0; i < BIG_LEN; i++)
        big_body[i] = (char)('a' + i % 26);
    client_t *c = calloc(1, sizeof(*c));
    c->refuse_every = 2;
    assert_int_equal(start_path(c, "127.0.0.1", "/big"), 0);
    uint64_t deadline = uv_hrtime() + 5000000000ull;
    while (!c->done && uv_hrtime() < deadline) {
        uv_run(&fx->w.loop, UV_RUN_NOWAIT);
        bool progress = false;
        backpressure_resume_all(c, &progress);
    }
    assert_true(c->done);
    assert_int_equal(c->error, 0);
    assert_true(c->refusals > 0);
    assert_int_equal(c->body_len, BIG_LEN);
    assert_memory_equal(c->body, big_body, BIG_LEN);

    /* Held at the very end: nothing is lost when the response completes while paused,
     * and on_done comes only after the held bytes, from the loop. */
    memset(c, 0, sizeof(*c));
    c->hold = true;
    assert_int_equal(start_path(c, "127.0.0.1", "/cl"), 0);
    run_for(100);
    assert_int_equal(c->heads, 1);
    assert_int_equal(c->body_len, 0);
    assert_int_equal(c->dones, 0);
    assert_true(c->paused);
    c->hold = false;
    c->paused = false;
    upstream_resume(c->up);
    assert_int_equal(c->body_len, 11); /* delivered synchronously */
    assert_int_equal(c->dones, 0);     /* on_done from the loop */
    assert_true(run_until(&c->done, 1000));
    assert_int_equal(c->error, 0);
    /* the connection went back to the pool */
    int before = fx->srv.accepted;
    memset(c, 0, sizeof(*c));
    fetch(c, "/cl");
    assert_int_equal(fx->srv.accepted, before);

    /* Held mid-stream on SSE: the stream continues after resume. */
    memset(c, 0, sizeof(*c));
    c->refuse_every = 1; /* refuses the first piece */
    assert_int_equal(start_path(c, "127.0.0.1", "/sse"), 0);
    run_for(100);
    assert_int_equal(c->body_len, 0);
    c->refuse_every = 0;
    c->paused = false;
    upstream_resume(c->up);
    assert_true(c->body_len > 0);
    assert_true(run_until(&c->done, 3000));
    assert_int_equal(c->error, 0);
    assert_int_equal(c->body_len, 59);
    free(c);
}

static void test_cancel(void **state)
{
    (void)state;
    client_t *c = calloc(1, sizeof(*c));
    /* cancelled before anything happened (on_sent pending for a pooled connection too) */
    assert_int_equal(start_path(c, "127.0.0.1", "/cl"), 0);
    upstream_cancel(c->up);
    run_for(50);
    assert_int_equal(c->sent + c->heads + c->dones, 0);

    /* cancelled mid-stream: no callback after, and the connection is not reused */
    memset(c, 0, sizeof(*c));
    assert_int_equal(start_path(c, "127.0.0.1", "/sse"), 0);
    while (c->pieces == 0)
        uv_run(&fx->w.loop, UV_RUN_ONCE);
    int pieces = c->pieces;
    upstream_cancel(c->up);
    run_for(100);
    assert_int_equal(c->pieces, pieces);
    assert_int_equal(c->dones, 0);
    int before = fx->srv.accepted;
    memset(c, 0, sizeof(*c));
    fetch(c, "/cl");
    assert_int_equal(fx->srv.accepted, before + 1);

    /* cancelled while paused */
    memset(c, 0, sizeof(*c));
    c->hold = true;
    assert_int_equal(start_path(c, "127.0.0.1", "/sse"), 0);
    run_for(30);
    assert_true(c->paused);
    upstream_cancel(c->up);
    run_for(100);
    assert_int_equal(c->dones, 0);

    /* cancelled while waiting for the head */
    memset(c, 0, sizeof(*c));
    assert_int_equal(start_path(c, "127.0.0.1", "/silent"), 0);
    run_for(30);
    assert_int_equal(c->sent, 1);
    upstream_cancel(c->up);
    run_for(30);
    assert_int_equal(c->heads + c->dones, 0);

    /* on_body asking to stop: on_done(-ECANCELED), connection closed */
    memset(c, 0, sizeof(*c));
    c->stop_after_pieces = 1;
    fetch(c, "/sse");
    assert_int_equal(c->error, -ECANCELED);
    assert_int_equal(c->pieces, 1);
    free(c);
}

static void test_response_forms(void **state)
{
    (void)state;
    client_t *c = calloc(1, sizeof(*c));
    /* interim answers (100, 103) are skipped */
    fetch(c, "/continue");
    assert_int_equal(c->error, 0);
    assert_int_equal(c->status, 200);
    assert_int_equal(c->heads, 1);
    assert_int_equal(c->body_len, 2);
    assert_int_equal(upstream_h1_idle_count(&fx->w), 1);
    /* a head split across reads */
    memset(c, 0, sizeof(*c));
    fetch(c, "/split");
    assert_int_equal(c->error, 0);
    assert_string_equal(c->content_type, "application/json");
    assert_int_equal(c->body_len, 11);
    assert_memory_equal(c->body, "{\"ok\":true}", 11);
    /* a chunked trailer is consumed: the connection stays usable */
    memset(c, 0, sizeof(*c));
    fetch(c, "/trailer");
    assert_int_equal(c->error, 0);
    assert_int_equal(c->body_len, 2);
    assert_int_equal(fx->srv.accepted, 1);
    assert_int_equal(upstream_h1_idle_count(&fx->w), 1);
    /* HTTP/1.0 without a length: the body ends with the connection, which is not pooled */
    memset(c, 0, sizeof(*c));
    fetch(c, "/http10");
    assert_int_equal(c->error, 0);
    assert_int_equal(c->body_len, 7);
    assert_memory_equal(c->body, "{\"a\":1}", 7);
    assert_int_equal(upstream_h1_idle_count(&fx->w), 0);
    /* bytes after the announced length: the body is delivered, the connection dropped */
    memset(c, 0, sizeof(*c));
    fetch(c, "/extra");
    assert_int_equal(c->error, 0);
    assert_int_equal(c->body_len, 2);
    assert_int_equal(upstream_h1_idle_count(&fx->w), 0);
    /* malformed answers */
    memset(c, 0, sizeof(*c));
    fetch(c, "/bighead");
    assert_int_equal(c->error, -EPROTO);
    assert_int_equal(c->heads, 0);
    memset(c, 0, sizeof(*c));
    fetch(c, "/gzip");
    assert_int_equal(c->error, -EPROTO);
    assert_int_equal(c->heads, 0);
    memset(c, 0, sizeof(*c));
    fetch(c, "/badchunk");
    assert_int_equal(c->error, -EPROTO);
    assert_int_equal(c->heads, 1);
    assert_int_equal(c->body_len, 0);
    /* a stream that breaks off: what came before the fault is delivered, then the error,
     * also when it was held under backpressure */
    for (int hold = 0; hold < 2; hold++) {
        memset(c, 0, sizeof(*c));
        c->hold = hold;
        assert_int_equal(start_path(c, "127.0.0.1", "/abort"), 0);
        if (hold) {
            run_for(100);
            assert_true(c->paused);
            assert_int_equal(c->dones, 0);
            c->hold = false;
            c->paused = false;
            upstream_resume(c->up);
            assert_int_equal(c->dones, 0);
        }
        assert_true(run_until(&c->done, 3000));
        assert_true(c->error == -EPROTO || c->error == -EIO);
        assert_int_equal(c->body_len, 5);
        assert_memory_equal(c->body, "hello", 5);
    }
    assert_int_equal(upstream_h1_idle_count(&fx->w), 0);
    free(c);
}

static void test_idle_pool(void **state)
{
    (void)state;
    client_t *c = calloc(1, sizeof(*c));
    /* an idle connection the upstream closes is noticed and dropped while idle */
    fetch(c, "/closelater");
    assert_int_equal(c->error, 0);
    assert_int_equal(upstream_h1_idle_count(&fx->w), 1);
    run_for(100);
    assert_int_equal(upstream_h1_idle_count(&fx->w), 0);
    int accepted = fx->srv.accepted, requests = fx->srv.requests;
    memset(c, 0, sizeof(*c));
    fetch(c, "/cl");
    assert_int_equal(c->error, 0);
    assert_int_equal(fx->srv.accepted, accepted + 1);
    assert_int_equal(fx->srv.requests, requests + 1);
    /* idle connections expire: the upstream sees them closed */
    assert_int_equal(upstream_h1_idle_count(&fx->w), 1);
    assert_non_null(fx->srv.conns);
    run_for(UPSTREAM_H1_POOL_IDLE_MS / 2);
    assert_int_equal(upstream_h1_idle_count(&fx->w), 1);
    run_for(UPSTREAM_H1_POOL_IDLE_MS / 2 + UPSTREAM_H1_POOL_IDLE_MS / 4 + 200);
    assert_int_equal(upstream_h1_idle_count(&fx->w), 0);
    run_for(50);
    assert_null(fx->srv.conns);
    free(c);
}

static void test_cancel_connecting(void **state)
{
    (void)state;
    /* a listener with a full accept queue: connects hang */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(lfd, 0), 0);
    getsockname(lfd, (struct sockaddr *)&sin, &len);
    int fillers[4];
    for (int i = 0; i < 4; i++) {
        fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fillers[i], (struct sockaddr *)&sin, sizeof(sin));
    }
    usleep(50000);
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", ntohs(sin.sin_port));
    upstream_request_t req = {url, "sk-x", false, (const uint8_t *)request_body, sizeof(request_body) - 1, UPSTREAM_AUTH_BEARER};
    client_t *c = calloc(2, sizeof(*c));
    assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, &c[0], &c[0].up), 0);
    assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, &c[1], &c[1].up), 0);
    upstream_cancel(c[0].up); /* at once */
    run_for(50);
    upstream_cancel(c[1].up); /* while connecting */
    run_for(400);             /* past the connect timeout */
    for (int i = 0; i < 2; i++)
        assert_int_equal(c[i].sent + c[i].heads + c[i].dones, 0);
    for (int i = 0; i < 4; i++)
        close(fillers[i]);
    close(lfd);
    free(c);
}

static void test_address_fallback(void **state)
{
    (void)state;
    /* "localhost" may resolve to ::1 first: an upstream on 127.0.0.1 only is still reached */
    srv_t *s4 = calloc(1, sizeof(*s4));
    srv_start_on(s4, &fx->w.loop, false);
    char url[128];
    snprintf(url, sizeof(url), "http://localhost:%d/cl", s4->port);
    upstream_request_t req = {url, "sk-x", false, (const uint8_t *)request_body, sizeof(request_body) - 1, UPSTREAM_AUTH_BEARER};
    client_t *c = calloc(1, sizeof(*c));
    for (int i = 0; i < 2; i++) {
        memset(c, 0, sizeof(*c));
        assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, c, &c->up), 0);
        assert_true(run_until(&c->done, 5000));
        assert_int_equal(c->error, 0);
        assert_int_equal(c->body_len, 11);
    }
    assert_int_equal(s4->accepted, 1);
    /* an IPv6 literal */
    if (fx->srv.has6) {
        snprintf(url, sizeof(url), "http://[::1]:%d/cl", fx->srv.port);
        memset(c, 0, sizeof(*c));
        assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, c, &c->up), 0);
        assert_true(run_until(&c->done, 3000));
        assert_int_equal(c->error, 0);
        assert_int_equal(c->body_len, 11);
        char host[64];
        snprintf(host, sizeof(host), "Host: [::1]:%d\r\n", fx->srv.port);
        assert_non_null(strstr(fx->srv.last_head, host));
    }
    srv_stop(s4);
    run_for(50);
    assert_int_equal(upstream_h1_idle_count(&fx->w), fx->srv.has6 ? 1 : 0);
    free(s4);
    free(c);
}

static void test_dispatch(void **state)
{
    (void)state;
    client_t *c = calloc(1, sizeof(*c));
    upstream_request_t req = {"https://api.example.com/v1/chat/completions", "k", false, NULL, 0, UPSTREAM_AUTH_BEARER};
    curl_calls = 0;
    assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, c, &c->up), -ENOTSUP);
    assert_int_equal(curl_calls, 1);
    /* a proxy applies: curl */
    setenv("http_proxy", "http://127.0.0.1:1", 1);
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/cl", fx->srv.port);
    req.url = url;
    assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, c, &c->up), -ENOTSUP);
    assert_int_equal(curl_calls, 2);
    /* ... unless no_proxy exempts the host */
    setenv("no_proxy", "localhost,127.0.0.1", 1);
    assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, c, &c->up), 0);
    assert_int_equal(curl_calls, 2);
    assert_string_equal(upstream_backend(c->up), "h1");
    assert_true(run_until(&c->done, 3000));
    assert_int_equal(c->error, 0);
    env_clear();
    /* what h2o's URL parser declines goes to curl */
    req.url = "http://user:pw@127.0.0.1:1/x";
    assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, c, &c->up), -ENOTSUP);
    assert_int_equal(curl_calls, 3);
    /* header injection is refused */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/cl", fx->srv.port);
    req.url = url;
    req.api_key = "k\r\nX-Evil: 1";
    assert_int_equal(upstream_start(&fx->w, &req, &client_cbs, c, &c->up), -EINVAL);
    free(c);
}

/* Optional micro-measure (LLMRELAY_BENCH=1): requests/s and CPU per request of the h1
 * backend against the in-test server (the server's CPU is included: same thread). */
static void test_bench(void **state)
{
    (void)state;
    if (getenv("LLMRELAY_BENCH") == NULL)
        skip();
    enum { N = 16, TOTAL = 50000 };
    client_t *cs = calloc(N, sizeof(*cs));
    int started = 0, finished = 0;
    uv_rusage_t r0, r1;
    uv_getrusage(&r0);
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < N; i++, started++)
        assert_int_equal(start_path(&cs[i], "127.0.0.1", "/cl"), 0);
    while (finished < TOTAL) {
        uv_run(&fx->w.loop, UV_RUN_ONCE);
        for (int i = 0; i < N; i++) {
            if (cs[i].done) {
                assert_int_equal(cs[i].error, 0);
                finished++;
                memset(&cs[i], 0, offsetof(client_t, body));
                cs[i].body_len = 0;
                cs[i].pieces = 0;
                cs[i].done = false;
                cs[i].dones = cs[i].sent = cs[i].heads = 0;
                if (started < TOTAL) {
                    assert_int_equal(start_path(&cs[i], "127.0.0.1", "/cl"), 0);
                    started++;
                }
            }
        }
    }
    uint64_t t1 = uv_hrtime();
    uv_getrusage(&r1);
    double wall = (double)(t1 - t0) / 1e9;
    double cpu = (double)(r1.ru_utime.tv_sec - r0.ru_utime.tv_sec + r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
                 (double)(r1.ru_utime.tv_usec - r0.ru_utime.tv_usec + r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e6;
    printf("h1 backend: %d requests, %.0f req/s, %.1f us CPU/request (client + in-test server), %d connections\n",
           TOTAL, TOTAL / wall, cpu * 1e6 / TOTAL, fx->srv.accepted);
    free(cs);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);                      /* as main.c does: writes to a peer that left fail with EPIPE */
    h2o_socket_buffer_prototype.allocator.max = 0; /* no unwiped recycling of socket buffers */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proxy_applies),
        cmocka_unit_test_setup_teardown(test_content_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sse_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_connection_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_responses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_named_host, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_connecting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_address_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dispatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bench, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
