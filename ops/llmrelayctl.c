/*
 * llmrelayctl.c — the operator CLI of llmrelay: one admin API call per run
 * (docs/admin-api.md), answers printed as text tables / "key: value" lines, or as the
 * server's JSON with --json.
 *
 * Global flags (--admin URL, --token-file F, --json) may come before or after the
 * command; they are taken out of argv first and the rest goes to the command group
 * (ops/ctl/provider.c, key.c, price.c, token.c, report.c, cluster.c: cluster and node). Environment: LLMRELAY_ADMIN, LLMRELAY_TOKEN_FILE.
 * Exit: 0 ok, 1 the server answered an error, 2 usage error, 3 admin API unreachable.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "ops/ctl/ctl.h"

static const char main_help[] =
    "usage: llmrelayctl [--admin URL] [--token-file F] [--json] COMMAND ...\n"
    "\n"
    "Operator CLI of llmrelay: talks to a node's admin API.\n"
    "\n"
    "commands:\n"
    "  provider set|list|show|delete     upstream providers ('llmrelayctl provider --help')\n"
    "  key create|list|show|rotate|revoke  relay API keys ('llmrelayctl key --help')\n"
    "  price set|list|show|delete        model prices, USD per 1M tokens\n"
    "  token create|list|delete          admin API tokens and their roles\n"
    "  logs [--key ID] [--since DUR] ... request metadata records\n"
    "  usage [--key ID] [--by ...]       requests, tokens and USD over a time range\n"
    "  audit [--since DUR]               who did what through the admin API\n"
    "  cluster status                    cluster members and their state\n"
    "  node drain [NAME]                 drain a node (as SIGTERM): finish in-flight, exit\n"
    "\n"
    "global options (before or after the command):\n"
    "  --admin URL        admin listener base URL (env LLMRELAY_ADMIN;\n"
    "                     default " CTL_DEFAULT_ADMIN ")\n"
    "  --token-file F     file holding the admin token (env LLMRELAY_TOKEN_FILE)\n"
    "  --json             print the server's JSON answer\n"
    "  --help             this help; COMMAND --help for a command's\n"
    "  --version          print the version\n"
    "\n"
    "exit status: 0 ok, 1 the server refused, 2 usage error, 3 admin API unreachable\n";

int main(int argc, char **argv)
{
    struct ctl ctl = {.out = stdout, .err = stderr};
    char *rest[CTL_MAX_ARGS];
    int nrest = 0;
    const char *token_file = getenv("LLMRELAY_TOKEN_FILE");
    const char *admin = getenv("LLMRELAY_ADMIN");
    int rc = 0;

    if (argc > CTL_MAX_ARGS) {
        ctl_errorf(&ctl, "too many arguments");
        return CTL_EXIT_USAGE;
    }
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            while (i < argc)
                rest[nrest++] = argv[i++];
            break;
        }
        if (strcmp(arg, "--json") == 0) {
            ctl.json = 1;
        } else if (strcmp(arg, "--admin") == 0 || strcmp(arg, "--token-file") == 0) {
            if (i + 1 >= argc) {
                ctl_errorf(&ctl, "option %s needs a value", arg);
                rc = -EINVAL;
            } else if (arg[2] == 'a') {
                admin = argv[++i];
            } else {
                token_file = argv[++i];
            }
        } else if (strncmp(arg, "--admin=", 8) == 0) {
            admin = arg + 8;
        } else if (strncmp(arg, "--token-file=", 13) == 0) {
            token_file = arg + 13;
        } else {
            rest[nrest++] = argv[i];
        }
    }
    if (rc < 0)
        return ctl_exit_code(rc);
    ctl.admin_url = (admin != NULL && admin[0] != '\0') ? admin : CTL_DEFAULT_ADMIN;

    if (nrest == 0) {
        fputs(main_help, stderr);
        return CTL_EXIT_USAGE;
    }
    const char *command = rest[0];
    if (strcmp(command, "--help") == 0 || strcmp(command, "-h") == 0 || strcmp(command, "help") == 0) {
        fputs(main_help, stdout);
        return CTL_EXIT_OK;
    }
    if (strcmp(command, "--version") == 0 || strcmp(command, "version") == 0) {
        printf("llmrelayctl %s\n", LLMRELAY_VERSION);
        return CTL_EXIT_OK;
    }
    int (*group)(struct ctl *, int, char **) = NULL;
    if (strcmp(command, "provider") == 0)
        group = ctl_provider_main;
    else if (strcmp(command, "key") == 0)
        group = ctl_key_main;
    else if (strcmp(command, "price") == 0)
        group = ctl_price_main;
    else if (strcmp(command, "token") == 0)
        group = ctl_token_main;
    else if (strcmp(command, "logs") == 0)
        group = ctl_logs_main;
    else if (strcmp(command, "usage") == 0)
        group = ctl_usage_main;
    else if (strcmp(command, "audit") == 0)
        group = ctl_audit_main;
    else if (strcmp(command, "cluster") == 0)
        group = ctl_cluster_main;
    else if (strcmp(command, "node") == 0)
        group = ctl_node_main;
    if (group == NULL) {
        ctl_errorf(&ctl, "unknown command '%.64s' (see 'llmrelayctl --help')", command);
        return CTL_EXIT_USAGE;
    }
    if (token_file != NULL && token_file[0] != '\0') {
        /* --help needs no token: only load it when the command is about to run */
        int wants_help = 0;
        for (int i = 1; i < nrest; i++)
            if (strcmp(rest[i], "--help") == 0 || strcmp(rest[i], "-h") == 0 || strcmp(rest[i], "help") == 0)
                wants_help = 1;
        if (!wants_help && (rc = ctl_load_token(&ctl, token_file)) < 0)
            return ctl_exit_code(rc);
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ctl_errorf(&ctl, "cannot initialise libcurl");
        ctl_dispose(&ctl);
        return CTL_EXIT_SERVER;
    }
    rc = group(&ctl, nrest, rest);
    curl_global_cleanup();
    ctl_dispose(&ctl);
    if (fflush(stdout) != 0 && rc == 0)
        rc = -EIO;
    return ctl_exit_code(rc);
}
