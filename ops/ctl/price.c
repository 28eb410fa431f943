/*
 * price.c — "llmrelayctl price set|list|show|delete": the price table through
 * /admin/v1/prices (docs/admin-api.md). Prices are USD per 1M tokens; cached-input and
 * reasoning prices are optional (absent: the input and output prices apply).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ctl/ctl.h"
#include "ops/ctl/http.h"
#include "ops/ctl/json.h"
#include "ops/ctl/opts.h"

static const char price_help[] = "usage: llmrelayctl [--admin URL] [--token-file F] [--json] price COMMAND ...\n"
                                 "\n"
                                 "Prices of models, in US dollars per 1M tokens (what budgets in USD are charged).\n"
                                 "\n"
                                 "commands:\n"
                                 "  set MODEL --input X --output Y [--cached-input Z] [--reasoning W]\n"
                                 "                  set (replace) a model's price\n"
                                 "  list            list prices\n"
                                 "  show MODEL      show one model's price\n"
                                 "  delete MODEL    delete a model's price\n";

static const char set_help[] =
    "usage: llmrelayctl price set MODEL --input X --output Y [--cached-input Z] [--reasoning W]\n"
    "\n"
    "Sets a model's price in USD per 1M tokens (replaces the whole record).\n"
    "\n"
    "  --input X          input (prompt) tokens\n"
    "  --output Y         output (completion) tokens\n"
    "  --cached-input Z   cached input tokens (default: the input price)\n"
    "  --reasoning W      reasoning tokens (default: the output price)\n";
static const char list_help[] = "usage: llmrelayctl price list\n\nLists every model's price.\n";
static const char show_help[] = "usage: llmrelayctl price show MODEL\n\nShows one model's price.\n";
static const char delete_help[] = "usage: llmrelayctl price delete MODEL\n\nDeletes one model's price.\n";

static const struct ctl_opt_spec no_opts[] = {{NULL, 0, 0}};
static const struct ctl_opt_spec set_opts[] = {
    {"input", 1, 0}, {"output", 1, 0}, {"cached-input", 1, 0}, {"reasoning", 1, 0}, {NULL, 0, 0},
};

static int print_price(struct ctl *ctl, yajl_val p)
{
    static const char *const labels[] = {"model", "input", "output", "cached_input", "reasoning", "updated_at"};
    static const char *const nulls[] = {"-", "-", "-", "(input price)", "(output price)", "-"};
    char *values[6] = {0};
    int rc = 0;
    for (size_t i = 0; i < 6; i++)
        if ((values[i] = ctl_json_text(ctl_json_get(p, labels[i], NULL), nulls[i])) == NULL)
            rc = -ENOMEM;
    if (rc == 0)
        ctl_print_kv(ctl->out, labels, values, 6);
    ctl_free_cells(values, 6);
    return rc;
}

static int print_price_list(struct ctl *ctl, yajl_val answer)
{
    static const char *const headers[] = {"MODEL", "INPUT", "OUTPUT", "CACHED_INPUT", "REASONING", "UPDATED_AT"};
    static const char *const fields[] = {"model", "input", "output", "cached_input", "reasoning", "updated_at"};
    enum { NCOLS = 6 };
    return ctl_print_list(ctl, answer, "prices", headers, fields, NULL, NCOLS);
}

static int price_set(struct ctl *ctl, const struct ctl_opts *opts, const char *path)
{
    static const char *const flags[] = {"input", "output", "cached-input", "reasoning"};
    static const char *const fields[] = {"input", "output", "cached_input", "reasoning"};
    for (int i = 0; i < 4; i++) {
        const char *v = ctl_opts_get(opts, flags[i]);
        if (v == NULL && i < 2) {
            ctl_errorf(ctl, "'price set' needs --input and --output (see --help)");
            return -EINVAL;
        }
        if (v != NULL && (!ctl_is_json_number(v) || v[0] == '-')) {
            ctl_errorf(ctl, "--%s must be a non-negative number such as 2.5", flags[i]);
            return -EINVAL;
        }
    }
    yajl_gen g = ctl_gen_new();
    if (g == NULL)
        return -ENOMEM;
    int bad = yajl_gen_map_open(g) != yajl_gen_status_ok;
    for (int i = 0; i < 4; i++) {
        const char *v = ctl_opts_get(opts, flags[i]);
        if (v == NULL)
            continue;
        bad |= ctl_gen_str(g, fields[i]) != yajl_gen_status_ok;
        bad |= yajl_gen_number(g, v, strlen(v)) != yajl_gen_status_ok;
    }
    bad |= yajl_gen_map_close(g) != yajl_gen_status_ok;
    yajl_val answer = NULL;
    int rc = bad ? -ENOMEM : 0;
    if (rc == 0) {
        const unsigned char *body;
        size_t len;
        yajl_gen_get_buf(g, &body, &len);
        rc = ctl_api(ctl, "PUT", path, (const char *)body, len, &answer);
    }
    ctl_gen_dispose(g);
    if (rc == 0)
        rc = ctl->json ? ctl_json_print(ctl->out, answer) : print_price(ctl, answer);
    ctl_json_free(answer);
    return rc;
}

int ctl_price_main(struct ctl *ctl, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(price_help, argc < 2 ? ctl->err : ctl->out);
        return argc < 2 ? -EINVAL : 0;
    }
    const char *cmd = argv[1];
    const struct ctl_opt_spec *specs = no_opts;
    const char *help;
    if (strcmp(cmd, "set") == 0) {
        specs = set_opts;
        help = set_help;
    } else if (strcmp(cmd, "list") == 0) {
        help = list_help;
    } else if (strcmp(cmd, "show") == 0) {
        help = show_help;
    } else if (strcmp(cmd, "delete") == 0) {
        help = delete_help;
    } else {
        ctl_errorf(ctl, "unknown command 'price %.64s' (see 'llmrelayctl price --help')", cmd);
        return -EINVAL;
    }
    char what[64];
    snprintf(what, sizeof(what), "price %s", cmd);
    struct ctl_opts opts;
    int rc = ctl_opts_parse(ctl, what, specs, argc - 2, argv + 2, &opts);
    if (rc < 0)
        return rc;
    if (opts.help) {
        fputs(help, ctl->out);
        return 0;
    }
    yajl_val answer = NULL;
    if (strcmp(cmd, "list") == 0) {
        if (opts.npositional != 0) {
            ctl_errorf(ctl, "'price list' takes no arguments");
            return -EINVAL;
        }
        rc = ctl_api(ctl, "GET", "/admin/v1/prices", NULL, 0, &answer);
        if (rc == 0)
            rc = ctl->json ? ctl_json_print(ctl->out, answer) : print_price_list(ctl, answer);
        ctl_json_free(answer);
        return rc;
    }
    if (opts.npositional != 1 || opts.positional[0][0] == '\0') {
        ctl_errorf(ctl, "'%s' takes exactly one MODEL (see --help)", what);
        return -EINVAL;
    }
    char path[512] = "/admin/v1/prices/";
    if (ctl_path_append_segment(path, sizeof(path), opts.positional[0]) < 0) {
        ctl_errorf(ctl, "model name too long");
        return -EINVAL;
    }
    if (strcmp(cmd, "set") == 0)
        return price_set(ctl, &opts, path);
    bool del = strcmp(cmd, "delete") == 0;
    rc = ctl_api(ctl, del ? "DELETE" : "GET", path, NULL, 0, &answer);
    if (rc == 0 && ctl->json) {
        rc = ctl_json_print(ctl->out, answer);
    } else if (rc == 0 && !del) {
        rc = print_price(ctl, answer);
    } else if (rc == 0) {
        char *deleted = ctl_json_text(ctl_json_get(answer, "deleted", NULL), "-");
        if (deleted == NULL)
            rc = -ENOMEM;
        else
            fprintf(ctl->out, "price of %s deleted\n", deleted);
        free(deleted);
    }
    ctl_json_free(answer);
    return rc;
}
