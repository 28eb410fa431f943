/*
 * token.c — "llmrelayctl token create|list|delete": admin API tokens with roles through
 * /admin/v1/tokens (docs/admin-api.md). "create" is the only answer that carries a token
 * (shown once); its buffers are wiped like every other answer's.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ctl/ctl.h"
#include "ops/ctl/http.h"
#include "ops/ctl/json.h"
#include "ops/ctl/opts.h"

static const char token_help[] = "usage: llmrelayctl [--admin URL] [--token-file F] [--json] token COMMAND ...\n"
                                 "\n"
                                 "Admin API tokens. Roles: admin (everything), operator (keys, providers, drain),\n"
                                 "viewer (read only).\n"
                                 "\n"
                                 "commands:\n"
                                 "  create --name N --role R   create a token; prints it once\n"
                                 "  list                       list tokens (names and roles, never the tokens)\n"
                                 "  delete NAME                delete a token\n";
static const char create_help[] = "usage: llmrelayctl token create --name N --role admin|operator|viewer\n"
                                  "\n"
                                  "Creates an admin API token and prints it: it is shown this once only.\n";
static const char list_help[] = "usage: llmrelayctl token list\n\nLists admin tokens: names, roles, creation.\n";
static const char delete_help[] = "usage: llmrelayctl token delete NAME\n\nDeletes an admin token.\n";

static const struct ctl_opt_spec no_opts[] = {{NULL, 0, 0}};
static const struct ctl_opt_spec create_opts[] = {{"name", 1, 0}, {"role", 1, 0}, {NULL, 0, 0}};

static int token_create(struct ctl *ctl, const struct ctl_opts *opts)
{
    const char *name = ctl_opts_get(opts, "name"), *role = ctl_opts_get(opts, "role");
    if (opts->npositional != 0 || name == NULL || name[0] == '\0' || role == NULL) {
        ctl_errorf(ctl, "'token create' needs --name N and --role R (see --help)");
        return -EINVAL;
    }
    if (strcmp(role, "admin") != 0 && strcmp(role, "operator") != 0 && strcmp(role, "viewer") != 0) {
        ctl_errorf(ctl, "--role must be admin, operator or viewer");
        return -EINVAL;
    }
    yajl_gen g = ctl_gen_new();
    if (g == NULL)
        return -ENOMEM;
    int bad = yajl_gen_map_open(g) != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, "name") != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, name) != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, "role") != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, role) != yajl_gen_status_ok;
    bad |= yajl_gen_map_close(g) != yajl_gen_status_ok;
    int rc = 0;
    if (bad) {
        ctl_errorf(ctl, "'token create': an argument is not valid UTF-8");
        rc = -EINVAL;
    }
    yajl_val answer = NULL;
    if (rc == 0) {
        const unsigned char *body;
        size_t len;
        yajl_gen_get_buf(g, &body, &len);
        rc = ctl_api(ctl, "POST", "/admin/v1/tokens", (const char *)body, len, &answer);
    }
    ctl_gen_dispose(g);
    if (rc == 0 && !YAJL_IS_STRING(ctl_json_get(answer, "token", NULL))) {
        ctl_errorf(ctl, "the answer carries no token");
        rc = -EPROTO;
    }
    if (rc == 0 && ctl->json) {
        rc = ctl_json_print(ctl->out, answer);
    } else if (rc == 0) {
        static const char *const labels[] = {"name", "role", "token"};
        char *values[3] = {0};
        for (int i = 0; i < 3; i++)
            if ((values[i] = ctl_json_text(ctl_json_get(answer, labels[i], NULL), "-")) == NULL)
                rc = -ENOMEM;
        if (rc == 0) {
            ctl_print_kv(ctl->out, labels, values, 3);
            fputs("Save this token now: it will not be shown again.\n", ctl->out);
        }
        for (int i = 0; i < 3; i++)
            if (values[i] != NULL)
                explicit_bzero(values[i], strlen(values[i]));
        ctl_free_cells(values, 3);
    }
    ctl_json_free(answer);
    return rc;
}

static int print_token_list(struct ctl *ctl, yajl_val answer)
{
    static const char *const headers[] = {"NAME", "ROLE", "CREATED"};
    static const char *const fields[] = {"name", "role", "created"};
    enum { NCOLS = 3 };
    return ctl_print_list(ctl, answer, "tokens", headers, fields, NULL, NCOLS);
}

int ctl_token_main(struct ctl *ctl, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(token_help, argc < 2 ? ctl->err : ctl->out);
        return argc < 2 ? -EINVAL : 0;
    }
    const char *cmd = argv[1];
    const struct ctl_opt_spec *specs = no_opts;
    const char *help;
    if (strcmp(cmd, "create") == 0) {
        specs = create_opts;
        help = create_help;
    } else if (strcmp(cmd, "list") == 0) {
        help = list_help;
    } else if (strcmp(cmd, "delete") == 0) {
        help = delete_help;
    } else {
        ctl_errorf(ctl, "unknown command 'token %.64s' (see 'llmrelayctl token --help')", cmd);
        return -EINVAL;
    }
    char what[64];
    snprintf(what, sizeof(what), "token %s", cmd);
    struct ctl_opts opts;
    int rc = ctl_opts_parse(ctl, what, specs, argc - 2, argv + 2, &opts);
    if (rc < 0)
        return rc;
    if (opts.help) {
        fputs(help, ctl->out);
        return 0;
    }
    if (strcmp(cmd, "create") == 0)
        return token_create(ctl, &opts);
    yajl_val answer = NULL;
    if (strcmp(cmd, "list") == 0) {
        if (opts.npositional != 0) {
            ctl_errorf(ctl, "'token list' takes no arguments");
            return -EINVAL;
        }
        rc = ctl_api(ctl, "GET", "/admin/v1/tokens", NULL, 0, &answer);
        if (rc == 0)
            rc = ctl->json ? ctl_json_print(ctl->out, answer) : print_token_list(ctl, answer);
        ctl_json_free(answer);
        return rc;
    }
    if (opts.npositional != 1 || opts.positional[0][0] == '\0') {
        ctl_errorf(ctl, "'token delete' takes exactly one NAME (see --help)");
        return -EINVAL;
    }
    char path[512] = "/admin/v1/tokens/";
    if (ctl_path_append_segment(path, sizeof(path), opts.positional[0]) < 0) {
        ctl_errorf(ctl, "token name too long");
        return -EINVAL;
    }
    rc = ctl_api(ctl, "DELETE", path, NULL, 0, &answer);
    if (rc == 0 && ctl->json) {
        rc = ctl_json_print(ctl->out, answer);
    } else if (rc == 0) {
        char *deleted = ctl_json_text(ctl_json_get(answer, "deleted", NULL), "-");
        if (deleted == NULL)
            rc = -ENOMEM;
        else
            fprintf(ctl->out, "token %s deleted\n", deleted);
        free(deleted);
    }
    ctl_json_free(answer);
    return rc;
}
