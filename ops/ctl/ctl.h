/*
 * ctl.h — shared context of llmrelayctl, the operator CLI of the admin API
 * (docs/admin-api.md), and the entry points of its command groups.
 *
 * Errors: functions return 0 or a negative errno-style code; main() turns the code
 * into the process exit status with ctl_exit_code():
 *   -EINVAL      usage error (bad command, flag or value)        -> exit 2
 *   -ENOTCONN    the admin listener could not be reached          -> exit 3
 *   anything else (-EREMOTEIO: the server answered an error, -EPROTO: unreadable
 *   answer, -ENOMEM, ...)                                         -> exit 1
 * The message has already been written to ctl->err when a function fails.
 */
#ifndef LLMRELAY_OPS_CTL_CTL_H
#define LLMRELAY_OPS_CTL_CTL_H

#include <stdio.h>

#define CTL_EXIT_OK 0
#define CTL_EXIT_SERVER 1
#define CTL_EXIT_USAGE 2
#define CTL_EXIT_UNREACHABLE 3

/* Bounds: a token file, an answer body, a command line. */
#define CTL_MAX_TOKEN 4096
#define CTL_MAX_RESPONSE (16u * 1024 * 1024)
#define CTL_MAX_ARGS 512

#define CTL_DEFAULT_ADMIN "http://127.0.0.1:9090"

struct ctl {
    const char *admin_url; /* borrowed (argv or environment); base URL, no trailing path */
    char *token;           /* owned, NUL-terminated, wiped and freed by ctl_dispose; NULL = none */
    int json;              /* --json: print the server's JSON instead of text */
    FILE *out;             /* borrowed: stdout in the binary */
    FILE *err;             /* borrowed: stderr in the binary */
};

/* Reads the admin token from path (one trailing newline ignored) into ctl->token.
 * The token itself never appears in a message. */
int ctl_load_token(struct ctl *ctl, const char *path);

/* Wipes and frees what ctl owns. */
void ctl_dispose(struct ctl *ctl);

/* Maps a function's result to the process exit status (see above). */
int ctl_exit_code(int rc);

/* Prints "llmrelayctl: <message>\n" on ctl->err. */
void ctl_errorf(const struct ctl *ctl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints the array answer[array] as a table: one row per element, column c = its member
 * fields[c] under headers[c], a null or absent member shown as null_texts[c] (NULL: "-").
 * 0, -EPROTO (no such array; said on ctl->err) or -ENOMEM. answer is a yajl_val. */
int ctl_print_list(const struct ctl *ctl, const void *answer, const char *array, const char *const *headers,
                   const char *const *fields, const char *const *null_texts, size_t ncols);

/* Command groups: argv[0] is the group's name ("provider", "key"); argv is borrowed
 * and may be modified (values of secret flags are wiped from it after use). */
int ctl_provider_main(struct ctl *ctl, int argc, char **argv);
int ctl_key_main(struct ctl *ctl, int argc, char **argv);
int ctl_price_main(struct ctl *ctl, int argc, char **argv);
int ctl_token_main(struct ctl *ctl, int argc, char **argv);
/* Reports: argv[0] is "logs", "usage" or "audit". */
int ctl_logs_main(struct ctl *ctl, int argc, char **argv);
int ctl_usage_main(struct ctl *ctl, int argc, char **argv);
int ctl_audit_main(struct ctl *ctl, int argc, char **argv);
/* "cluster status": membership (ops/ctl/cluster.c). */
int ctl_cluster_main(struct ctl *ctl, int argc, char **argv);
/* "node drain [NAME]": POST /admin/v1/drain (ops/ctl/cluster.c). */
int ctl_node_main(struct ctl *ctl, int argc, char **argv);

#endif
