/*
 * report.c — "llmrelayctl logs", "usage" and "audit": read-only reports through
 * /admin/v1/logs, /admin/v1/usage and /admin/v1/audit (docs/admin-api.md). Flags become
 * query parameters (percent-encoded); the server validates durations and times, so a bad
 * one is its 400 (exit 1); the flags' shapes (status, limit, by) are checked here (exit 2).
 * Text output is a table; a further page is announced with the --cursor to ask for it.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ctl/ctl.h"
#include "ops/ctl/http.h"
#include "ops/ctl/json.h"
#include "ops/ctl/opts.h"

static const char logs_help[] =
    "usage: llmrelayctl logs [--key ID] [--since DUR|TIME] [--until DUR|TIME] [--status S]\n"
    "           [--model M] [--limit N] [--cursor C]\n"
    "\n"
    "Request metadata records (never content), newest first. DUR is 30s, 15m, 24h, 7d\n"
    "back from now; TIME is RFC 3339. --status takes a code (429) or a class (4xx).\n"
    "Default: the last 24h, 100 records.\n";
static const char usage_help[] = "usage: llmrelayctl usage [--key ID] [--since DUR|TIME] [--until DUR|TIME]\n"
                                 "           [--by model|hour|node|key]\n"
                                 "\n"
                                 "Requests, tokens and USD over a time range (default: the last 24h), in total and\n"
                                 "grouped by model, hour, node or key.\n";
static const char audit_help[] =
    "usage: llmrelayctl audit [--since DUR|TIME] [--until DUR|TIME] [--limit N] [--cursor C]\n"
    "\n"
    "The admin API's audit log: who did what, when, from where (default: the last 24h).\n";

static const struct ctl_opt_spec logs_opts[] = {
    {"key", 1, 0},   {"since", 1, 0}, {"until", 1, 0},  {"status", 1, 0},
    {"model", 1, 0}, {"limit", 1, 0}, {"cursor", 1, 0}, {NULL, 0, 0},
};
static const struct ctl_opt_spec usage_opts[] = {
    {"key", 1, 0}, {"since", 1, 0}, {"until", 1, 0}, {"by", 1, 0}, {NULL, 0, 0},
};
static const struct ctl_opt_spec audit_opts[] = {
    {"since", 1, 0}, {"until", 1, 0}, {"limit", 1, 0}, {"cursor", 1, 0}, {NULL, 0, 0},
};

/* Appends "?name=value" or "&name=value" (value percent-encoded) to path. */
static int query_add(char *path, size_t cap, const char *name, const char *value)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t len = strlen(path);
    size_t need = len + 1 + strlen(name) + 1 + 3 * strlen(value) + 1;
    if (need > cap)
        return -ENAMETOOLONG;
    path[len++] = strchr(path, '?') != NULL ? '&' : '?';
    len += (size_t)snprintf(path + len, cap - len, "%s=", name);
    for (const unsigned char *p = (const unsigned char *)value; *p != '\0'; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
            *p == '.' || *p == '_' || *p == '~' || *p == ':') {
            path[len++] = (char)*p;
        } else {
            path[len++] = '%';
            path[len++] = hex[*p >> 4];
            path[len++] = hex[*p & 15];
        }
    }
    path[len] = '\0';
    return 0;
}

/* Adds every given flag of names[] as the query parameter of the same name. */
static int add_flags(struct ctl *ctl, char *path, size_t cap, const struct ctl_opts *opts, const char *const *names)
{
    for (size_t i = 0; names[i] != NULL; i++) {
        const char *v = ctl_opts_get(opts, names[i]);
        if (v == NULL)
            continue;
        if (v[0] == '\0') {
            ctl_errorf(ctl, "--%s needs a value", names[i]);
            return -EINVAL;
        }
        if (query_add(path, cap, names[i], v) < 0) {
            ctl_errorf(ctl, "--%s is too long", names[i]);
            return -EINVAL;
        }
    }
    return 0;
}

static int check_limit(struct ctl *ctl, const struct ctl_opts *opts)
{
    const char *v = ctl_opts_get(opts, "limit");
    long long n;
    if (v != NULL && (!ctl_parse_int(v, &n) || n < 1)) {
        ctl_errorf(ctl, "--limit must be a positive integer");
        return -EINVAL;
    }
    return 0;
}

/* A table of rows (objects) with the given fields; cells of null/absent values show "-". */
static int print_rows(struct ctl *ctl, yajl_val rows, const char *const *headers, const char *const *fields,
                      size_t ncols, yajl_val extra_row)
{
    size_t nrows = rows->u.array.len + (extra_row != NULL ? 1 : 0);
    char **cells = calloc(nrows * ncols + 1, sizeof(*cells));
    if (cells == NULL)
        return -ENOMEM;
    int rc = 0;
    for (size_t r = 0; r < nrows && rc == 0; r++) {
        yajl_val row = r < rows->u.array.len ? rows->u.array.values[r] : extra_row;
        for (size_t c = 0; c < ncols; c++) {
            yajl_val v = ctl_json_get(row, fields[c], NULL);
            if (row == extra_row && c == 0 && v == NULL)
                cells[r * ncols + c] = strdup("TOTAL");
            else
                cells[r * ncols + c] = ctl_json_text(v, "-");
            if (cells[r * ncols + c] == NULL)
                rc = -ENOMEM;
        }
    }
    if (rc == 0)
        ctl_print_table(ctl->out, headers, ncols, cells, nrows);
    ctl_free_cells(cells, nrows * ncols);
    free(cells);
    return rc;
}

static void print_next_cursor(struct ctl *ctl, yajl_val answer, const char *command)
{
    yajl_val next = ctl_json_get(answer, "next_cursor", NULL);
    if (YAJL_IS_STRING(next)) {
        char *text = ctl_json_text(next, "");
        if (text != NULL)
            fprintf(ctl->out, "more: llmrelayctl %s ... --cursor %s\n", command, text);
        free(text);
    }
}

static int logs_run(struct ctl *ctl, const struct ctl_opts *opts)
{
    const char *status = ctl_opts_get(opts, "status");
    if (status != NULL) {
        size_t n = strlen(status);
        bool code = n == 3 && status[0] >= '1' && status[0] <= '5' && status[1] >= '0' && status[1] <= '9' &&
                    status[2] >= '0' && status[2] <= '9';
        bool cls = n == 3 && status[0] >= '1' && status[0] <= '5' && (status[1] == 'x' || status[1] == 'X') &&
                   (status[2] == 'x' || status[2] == 'X');
        if (!code && !cls) {
            ctl_errorf(ctl, "--status must be a status code (429) or a class (4xx)");
            return -EINVAL;
        }
    }
    int rc = check_limit(ctl, opts);
    if (rc < 0)
        return rc;
    char path[2048] = "/admin/v1/logs";
    static const char *const names[] = {"key", "since", "until", "status", "model", "limit", "cursor", NULL};
    if ((rc = add_flags(ctl, path, sizeof(path), opts, names)) < 0)
        return rc;
    yajl_val answer = NULL;
    rc = ctl_api(ctl, "GET", path, NULL, 0, &answer);
    if (rc == 0 && ctl->json) {
        rc = ctl_json_print(ctl->out, answer);
    } else if (rc == 0) {
        yajl_val records = ctl_json_get(answer, "records", NULL);
        if (!YAJL_IS_ARRAY(records)) {
            ctl_errorf(ctl, "the answer has no \"records\" array");
            rc = -EPROTO;
        } else {
            static const char *const headers[] = {"TS",     "REQUEST_ID",   "KEY",           "MODEL",
                                                  "STATUS", "INPUT_TOKENS", "OUTPUT_TOKENS", "LATENCY_MS"};
            static const char *const fields[] = {"ts",     "request_id",   "key_id",        "model",
                                                 "status", "input_tokens", "output_tokens", "latency_ms"};
            rc = print_rows(ctl, records, headers, fields, 8, NULL);
            if (rc == 0)
                print_next_cursor(ctl, answer, "logs");
        }
    }
    ctl_json_free(answer);
    return rc;
}

static int usage_run(struct ctl *ctl, const struct ctl_opts *opts)
{
    const char *by = ctl_opts_get(opts, "by");
    if (by != NULL && strcmp(by, "model") != 0 && strcmp(by, "hour") != 0 && strcmp(by, "node") != 0 &&
        strcmp(by, "key") != 0) {
        ctl_errorf(ctl, "--by must be model, hour, node or key");
        return -EINVAL;
    }
    char path[2048] = "/admin/v1/usage";
    static const char *const names[] = {"key", "since", "until", "by", NULL};
    int rc = add_flags(ctl, path, sizeof(path), opts, names);
    if (rc < 0)
        return rc;
    yajl_val answer = NULL;
    rc = ctl_api(ctl, "GET", path, NULL, 0, &answer);
    if (rc == 0 && ctl->json) {
        rc = ctl_json_print(ctl->out, answer);
    } else if (rc == 0) {
        yajl_val groups = ctl_json_get(answer, "groups", NULL);
        yajl_val totals = ctl_json_get(answer, "totals", NULL);
        if (!YAJL_IS_ARRAY(groups) || !YAJL_IS_OBJECT(totals)) {
            ctl_errorf(ctl, "the answer has no \"totals\" and \"groups\"");
            rc = -EPROTO;
        } else {
            char *from = ctl_json_text(ctl_json_get(answer, "from", NULL), "-");
            char *to = ctl_json_text(ctl_json_get(answer, "to", NULL), "-");
            if (from != NULL && to != NULL)
                fprintf(ctl->out, "from %s to %s\n", from, to);
            free(from);
            free(to);
            static const char *const headers[] = {"GROUP", "REQUESTS", "INPUT_TOKENS", "OUTPUT_TOKENS", "USD"};
            static const char *const fields[] = {"group", "requests", "input_tokens", "output_tokens", "usd"};
            rc = print_rows(ctl, groups, headers, fields, 5, totals);
        }
    }
    ctl_json_free(answer);
    return rc;
}

static int audit_run(struct ctl *ctl, const struct ctl_opts *opts)
{
    int rc = check_limit(ctl, opts);
    if (rc < 0)
        return rc;
    char path[2048] = "/admin/v1/audit";
    static const char *const names[] = {"since", "until", "limit", "cursor", NULL};
    if ((rc = add_flags(ctl, path, sizeof(path), opts, names)) < 0)
        return rc;
    yajl_val answer = NULL;
    rc = ctl_api(ctl, "GET", path, NULL, 0, &answer);
    if (rc == 0 && ctl->json) {
        rc = ctl_json_print(ctl->out, answer);
    } else if (rc == 0) {
        yajl_val entries = ctl_json_get(answer, "entries", NULL);
        if (!YAJL_IS_ARRAY(entries)) {
            ctl_errorf(ctl, "the answer has no \"entries\" array");
            rc = -EPROTO;
        } else {
            static const char *const headers[] = {"TS",     "TOKEN",  "ROLE", "ACTION",
                                                  "TARGET", "STATUS", "IP",   "REQUEST_ID"};
            static const char *const fields[] = {"ts",     "token_name", "role", "action",
                                                 "target", "status",     "ip",   "request_id"};
            rc = print_rows(ctl, entries, headers, fields, 8, NULL);
            if (rc == 0)
                print_next_cursor(ctl, answer, "audit");
        }
    }
    ctl_json_free(answer);
    return rc;
}

static int report_main(struct ctl *ctl, int argc, char **argv, const char *what, const struct ctl_opt_spec *specs,
                       const char *help, int (*run)(struct ctl *, const struct ctl_opts *))
{
    struct ctl_opts opts;
    int rc = ctl_opts_parse(ctl, what, specs, argc - 1, argv + 1, &opts);
    if (rc < 0)
        return rc;
    if (opts.help || (opts.npositional == 1 && strcmp(opts.positional[0], "help") == 0)) {
        fputs(help, ctl->out);
        return 0;
    }
    if (opts.npositional != 0) {
        ctl_errorf(ctl, "'%s' takes no positional arguments (see --help)", what);
        return -EINVAL;
    }
    return run(ctl, &opts);
}

int ctl_logs_main(struct ctl *ctl, int argc, char **argv)
{
    return report_main(ctl, argc, argv, "logs", logs_opts, logs_help, logs_run);
}

int ctl_usage_main(struct ctl *ctl, int argc, char **argv)
{
    return report_main(ctl, argc, argv, "usage", usage_opts, usage_help, usage_run);
}

int ctl_audit_main(struct ctl *ctl, int argc, char **argv)
{
    return report_main(ctl, argc, argv, "audit", audit_opts, audit_help, audit_run);
}
