/*
 * ctl.c — llmrelayctl's context: the admin token (read from a file, wiped when done),
 * messages on stderr, and the mapping of error codes to exit statuses.
 */
#include "ops/ctl/ctl.h"
#include "ops/ctl/json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void ctl_errorf(const struct ctl *ctl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("llmrelayctl: ", ctl->err);
    vfprintf(ctl->err, fmt, ap);
    fputc('\n', ctl->err);
    va_end(ap);
}

int ctl_load_token(struct ctl *ctl, const char *path)
{
    char buf[CTL_MAX_TOKEN + 2];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        ctl_errorf(ctl, "cannot read token file %s: %s", path, strerror(err));
        return -EINVAL;
    }
    size_t len = 0;
    int rc = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = errno;
            ctl_errorf(ctl, "cannot read token file %s: %s", path, strerror(err));
            rc = -EINVAL;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == sizeof(buf) - 1) {
            ctl_errorf(ctl, "token file %s is too long (at most %d bytes)", path, CTL_MAX_TOKEN);
            rc = -EINVAL;
            break;
        }
    }
    close(fd);
    if (rc == 0) {
        if (len > 0 && buf[len - 1] == '\n')
            len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
        if (len == 0) {
            ctl_errorf(ctl, "token file %s is empty", path);
            rc = -EINVAL;
        }
        for (size_t i = 0; i < len && rc == 0; i++) {
            if ((unsigned char)buf[i] <= 0x20 || (unsigned char)buf[i] >= 0x7f) {
                ctl_errorf(ctl, "token file %s holds characters a token cannot have", path);
                rc = -EINVAL;
            }
        }
    }
    if (rc == 0) {
        char *token = malloc(len + 1);
        if (token == NULL) {
            rc = -ENOMEM;
        } else {
            memcpy(token, buf, len);
            token[len] = '\0';
            if (ctl->token != NULL) {
                explicit_bzero(ctl->token, strlen(ctl->token));
                free(ctl->token);
            }
            ctl->token = token;
        }
    }
    explicit_bzero(buf, sizeof(buf));
    return rc;
}

void ctl_dispose(struct ctl *ctl)
{
    if (ctl->token != NULL) {
        explicit_bzero(ctl->token, strlen(ctl->token));
        free(ctl->token);
        ctl->token = NULL;
    }
}

int ctl_exit_code(int rc)
{
    if (rc == 0)
        return CTL_EXIT_OK;
    if (rc == -EINVAL)
        return CTL_EXIT_USAGE;
    if (rc == -ENOTCONN)
        return CTL_EXIT_UNREACHABLE;
    return CTL_EXIT_SERVER;
}

int ctl_print_list(const struct ctl *ctl, const void *answer, const char *array, const char *const *headers,
                   const char *const *fields, const char *const *null_texts, size_t ncols)
{
    yajl_val list = ctl_json_get((yajl_val)answer, array, NULL);
    if (!YAJL_IS_ARRAY(list)) {
        ctl_errorf(ctl, "the answer has no \"%s\" array", array);
        return -EPROTO;
    }
    size_t nrows = list->u.array.len;
    char **cells = calloc(nrows * ncols + 1, sizeof(*cells));
    if (cells == NULL)
        return -ENOMEM;
    int rc = 0;
    for (size_t r = 0; r < nrows && rc == 0; r++)
        for (size_t c = 0; c < ncols; c++) {
            const char *null_text = null_texts != NULL && null_texts[c] != NULL ? null_texts[c] : "-";
            yajl_val v = ctl_json_get(list->u.array.values[r], fields[c], NULL);
            if ((cells[r * ncols + c] = ctl_json_text(v, null_text)) == NULL)
                rc = -ENOMEM;
        }
    if (rc == 0)
        ctl_print_table(ctl->out, headers, ncols, cells, nrows);
    ctl_free_cells(cells, nrows * ncols);
    free(cells);
    return rc;
}
