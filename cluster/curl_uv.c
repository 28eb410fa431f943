/* curl_uv: drives a libcurl multi handle from a libuv loop (the multi_socket API).
 *
 * How it works (see NOTES-h2o-libcurl.md):
 * - curl tells us which sockets to watch through CURLMOPT_SOCKETFUNCTION. Each socket gets
 *   one uv_poll_t (struct curl_uv_sock) linked to it with curl_multi_assign. On
 *   CURL_POLL_REMOVE the poll is stopped at once (so libuv forgets the fd and a new socket
 *   that reuses the same fd number can get a fresh poll right away), unlinked, and closed;
 *   it is freed in its close callback.
 * - curl asks for a timeout through CURLMOPT_TIMERFUNCTION. That callback only arms (0 =
 *   next loop iteration) or stops one uv_timer; the timer's own callback then calls
 *   curl_multi_socket_action(CURL_SOCKET_TIMEOUT). curl is never re-entered from its own
 *   callbacks.
 * - After every socket action, finished transfers are drained with curl_multi_info_read:
 *   the result is read first, the easy handle is removed from the multi, and only then the
 *   done callback runs — so it may clean up or re-add the handle, remove other transfers
 *   or even destroy the curl_uv (the drain loop stops when that happens).
 * - Each attached easy handle carries a struct curl_uv_xfer (cb, data, list links) in
 *   CURLOPT_PRIVATE; the list lets curl_uv_destroy detach whatever is still attached
 *   (libcurl 7.88 has no curl_multi_get_handles).
 * - The struct outlives curl_uv_destroy until every uv handle is closed (handles_open).
 */
#include "cluster/curl_uv.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

struct curl_uv_xfer {
    CURL *easy;
    curl_uv_done_cb cb;
    void *data;
    struct curl_uv_xfer *prev, *next;
};

struct curl_uv_sock {
    uv_poll_t poll;
    curl_socket_t fd;
    curl_uv_t *cu;
    struct curl_uv_sock *prev, *next; /* in cu->socks while active */
};

struct curl_uv {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    struct curl_uv_xfer *xfers;
    struct curl_uv_sock *socks;
    size_t n_xfers;
    unsigned handles_open; /* uv handles not yet closed (timer + polls) */
    bool closing;
};

static void maybe_free(curl_uv_t *cu)
{
    if (cu->closing && cu->handles_open == 0)
        free(cu);
}

static void sock_close_cb(uv_handle_t *h)
{
    struct curl_uv_sock *s = h->data;
    curl_uv_t *cu = s->cu;
    free(s);
    cu->handles_open--;
    maybe_free(cu);
}

static void timer_close_cb(uv_handle_t *h)
{
    curl_uv_t *cu = h->data;
    cu->handles_open--;
    maybe_free(cu);
}

static void sock_unlink(curl_uv_t *cu, struct curl_uv_sock *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        cu->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

static void sock_release(curl_uv_t *cu, struct curl_uv_sock *s)
{
    uv_poll_stop(&s->poll);
    sock_unlink(cu, s);
    uv_close((uv_handle_t *)&s->poll, sock_close_cb);
}

static void xfer_unlink(curl_uv_t *cu, struct curl_uv_xfer *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        cu->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
    cu->n_xfers--;
}

/* Delivers every finished transfer. Stops early if a callback destroyed cu. */
static void drain(curl_uv_t *cu)
{
    CURLMsg *msg;
    int pending;
    while (!cu->closing && (msg = curl_multi_info_read(cu->multi, &pending)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode result = msg->data.result; /* read before remove: msg dies with it */
        struct curl_uv_xfer *x = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
        curl_multi_remove_handle(cu->multi, easy);
        if (x == NULL)
            continue;
        xfer_unlink(cu, x);
        curl_uv_done_cb cb = x->cb;
        void *data = x->data;
        free(x);
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        cb(easy, result, data);
    }
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
    struct curl_uv_sock *s = p->data;
    curl_uv_t *cu = s->cu;
    int flags = 0;
    if (cu->closing)
        return;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    int running;
    curl_multi_socket_action(cu->multi, s->fd, flags, &running);
    drain(cu);
}

static void timer_cb(uv_timer_t *t)
{
    curl_uv_t *cu = t->data;
    if (cu->closing)
        return;
    int running;
    curl_multi_socket_action(cu->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain(cu);
}

static int socket_fn(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    curl_uv_t *cu = userp;
    struct curl_uv_sock *s = socketp;

    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            curl_multi_assign(cu->multi, fd, NULL);
            sock_release(cu, s);
        }
        return 0;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL)
            return -1;
        /* A previous poll on this fd number was stopped on CURL_POLL_REMOVE, so libuv no
         * longer watches the fd even if that handle is still closing. */
        if (uv_poll_init_socket(cu->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        s->fd = fd;
        s->cu = cu;
        s->next = cu->socks;
        if (cu->socks)
            cu->socks->prev = s;
        cu->socks = s;
        cu->handles_open++;
        curl_multi_assign(cu->multi, fd, s);
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    if (uv_poll_start(&s->poll, events, poll_cb) != 0)
        return -1;
    return 0;
}

static int timer_fn(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    curl_uv_t *cu = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&cu->timer);
    else
        uv_timer_start(&cu->timer, timer_cb, (uint64_t)timeout_ms, 0);
    return 0;
}

curl_uv_t *curl_uv_create(uv_loop_t *loop)
{
    curl_uv_t *cu = calloc(1, sizeof(*cu));
    if (cu == NULL)
        return NULL;
    cu->loop = loop;
    cu->multi = curl_multi_init();
    if (cu->multi == NULL) {
        free(cu);
        return NULL;
    }
    if (uv_timer_init(loop, &cu->timer) != 0) {
        curl_multi_cleanup(cu->multi);
        free(cu);
        return NULL;
    }
    cu->timer.data = cu;
    cu->handles_open = 1;
    curl_multi_setopt(cu->multi, CURLMOPT_SOCKETFUNCTION, socket_fn);
    curl_multi_setopt(cu->multi, CURLMOPT_SOCKETDATA, cu);
    curl_multi_setopt(cu->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
    curl_multi_setopt(cu->multi, CURLMOPT_TIMERDATA, cu);
    curl_multi_setopt(cu->multi, CURLMOPT_MAXCONNECTS, 1024L);
    curl_multi_setopt(cu->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    return cu;
}

void curl_uv_destroy(curl_uv_t *cu)
{
    if (cu == NULL || cu->closing)
        return;
    while (cu->xfers != NULL) {
        struct curl_uv_xfer *x = cu->xfers;
        xfer_unlink(cu, x);
        curl_multi_remove_handle(cu->multi, x->easy);
        curl_easy_setopt(x->easy, CURLOPT_PRIVATE, NULL);
        free(x);
    }
    /* From here on curl must not call back into us: cleanup closes cached connections. */
    cu->closing = true;
    curl_multi_setopt(cu->multi, CURLMOPT_SOCKETFUNCTION, NULL);
    curl_multi_setopt(cu->multi, CURLMOPT_TIMERFUNCTION, NULL);
    curl_multi_cleanup(cu->multi);
    cu->multi = NULL;
    while (cu->socks != NULL)
        sock_release(cu, cu->socks);
    uv_timer_stop(&cu->timer);
    uv_close((uv_handle_t *)&cu->timer, timer_close_cb);
}

int curl_uv_add(curl_uv_t *cu, CURL *easy, curl_uv_done_cb cb, void *data)
{
    if (cu == NULL || cu->closing || easy == NULL || cb == NULL)
        return -EINVAL;
    struct curl_uv_xfer *x = calloc(1, sizeof(*x));
    if (x == NULL)
        return -ENOMEM;
    x->easy = easy;
    x->cb = cb;
    x->data = data;
    curl_easy_setopt(easy, CURLOPT_PRIVATE, x);
    /* Adding arms the timer (timeout 0): the transfer starts on the next iteration, so the
     * done callback can never run inside this call. */
    CURLMcode rc = curl_multi_add_handle(cu->multi, easy);
    if (rc != CURLM_OK) {
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        free(x);
        return rc == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EIO;
    }
    x->next = cu->xfers;
    if (cu->xfers)
        cu->xfers->prev = x;
    cu->xfers = x;
    cu->n_xfers++;
    return 0;
}

void curl_uv_remove(curl_uv_t *cu, CURL *easy)
{
    if (cu == NULL || cu->closing || easy == NULL)
        return;
    struct curl_uv_xfer *x = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
    if (x == NULL || x->easy != easy)
        return;
    xfer_unlink(cu, x);
    free(x);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
    /* Also drops a pending CURLMSG_DONE of this handle, so no callback can follow. */
    curl_multi_remove_handle(cu->multi, easy);
}

CURLM *curl_uv_multi(curl_uv_t *cu)
{
    return cu->multi;
}

size_t curl_uv_count(const curl_uv_t *cu)
{
    return cu->n_xfers;
}
