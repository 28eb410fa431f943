/*
 * http.h — one synchronous admin API call over libcurl (easy interface).
 */
#ifndef LLMRELAY_OPS_CTL_HTTP_H
#define LLMRELAY_OPS_CTL_HTTP_H

#include <stddef.h>

#include <yajl/yajl_tree.h>

#include "ops/ctl/ctl.h"

struct ctl_response {
    long status; /* HTTP status code */
    char *body;  /* owned, NUL-terminated (len bytes + NUL); free with ctl_response_dispose */
    size_t len;
};

/* Sends method + ctl->admin_url + path with an optional JSON body (borrowed, may be NULL)
 * and the admin token; fills *resp on any HTTP answer (whatever its status).
 * Returns 0, -ENOTCONN (unreachable; message printed), -EINVAL (bad admin URL),
 * -EMSGSIZE (answer over CTL_MAX_RESPONSE) or -ENOMEM. */
int ctl_http_call(struct ctl *ctl, const char *method, const char *path, const char *body, size_t body_len,
                  struct ctl_response *resp);

/* Wipes and frees resp->body. */
void ctl_response_dispose(struct ctl_response *resp);

/* The usual call: as ctl_http_call, then parses the answer. On a 2xx answer with a JSON
 * body, *out receives the tree (owned by the caller: free with ctl_json_free) and 0 is
 * returned. On a non-2xx answer, prints "llmrelayctl: <error.message> (HTTP <status>)"
 * and returns -EREMOTEIO. A 2xx answer that is not JSON gives -EPROTO. */
int ctl_api(struct ctl *ctl, const char *method, const char *path, const char *body, size_t body_len, yajl_val *out);

/* Appends segment to path (a buffer of size cap holding a NUL-terminated string),
 * percent-encoding it. Returns 0 or -ENAMETOOLONG. */
int ctl_path_append_segment(char *path, size_t cap, const char *segment);

#endif
