/*
 * provider.c — "llmrelayctl provider set|list|show|delete": upstream provider records
 * through /admin/v1/providers (docs/admin-api.md).
 *
 * "set" builds the whole record from flags and PUTs it (the server replaces the record),
 * then wipes the upstream keys from its buffers and from argv. Answers only ever carry
 * masked upstream keys; text mode prints them as the server gave them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ctl/ctl.h"
#include "ops/ctl/http.h"
#include "ops/ctl/json.h"
#include "ops/ctl/opts.h"

static const char provider_help[] = "usage: llmrelayctl [--admin URL] [--token-file F] [--json] provider COMMAND ...\n"
                                    "\n"
                                    "Upstream providers (channels) that models are routed to.\n"
                                    "\n"
                                    "commands:\n"
                                    "  set NAME ...    create or replace a provider (see 'provider set --help')\n"
                                    "  list            list providers\n"
                                    "  show NAME       show one provider\n"
                                    "  delete NAME     delete a provider\n";

static const char set_help[] = "usage: llmrelayctl provider set NAME --type openai|anthropic|gemini --base-url URL\n"
                               "           --api-key K [--api-key K2 ...] --models M1,M2 [--map ALIAS=UPSTREAM ...]\n"
                               "           [--priority N] [--weight N] [--region R]\n"
                               "\n"
                               "Creates provider NAME or replaces its whole record (options left out take their\n"
                               "defaults: no map, priority 0, weight 1, any region).\n"
                               "\n"
                               "  --type T          openai, anthropic or gemini (the upstream's wire format)\n"
                               "  --base-url URL    as the official SDK takes it: openai includes the version\n"
                               "                    (https://api.openai.com/v1), anthropic and gemini do not\n"
                               "  --api-key K       an upstream API key; repeat for several (never shown back)\n"
                               "  --models M1,M2    models this provider serves (repeatable, comma-separated)\n"
                               "  --map A=U         clients ask for model A, the upstream gets U (repeatable)\n"
                               "  --priority N      integer, higher is tried first (default 0)\n"
                               "  --weight N        integer, share among equal priorities (default 1)\n"
                               "  --region R        region this provider belongs to (default: any)\n";

static const char list_help[] = "usage: llmrelayctl provider list\n\nLists every provider.\n";
static const char show_help[] = "usage: llmrelayctl provider show NAME\n\n"
                                "Shows one provider and the circuit breaker of each of its upstream keys\n"
                                "(state closed|half_open|open, merged over the node's workers: the worst state,\n"
                                "summed counters).\n";
static const char delete_help[] = "usage: llmrelayctl provider delete NAME\n\nDeletes one provider.\n";

static const struct ctl_opt_spec no_opts[] = {{NULL, 0, 0}};
static const struct ctl_opt_spec set_opts[] = {
    {"type", 1, 0},     {"base-url", 1, 0}, {"api-key", 1, 1}, {"models", 1, 1}, {"map", 1, 1},
    {"priority", 1, 0}, {"weight", 1, 0},   {"region", 1, 0},  {NULL, 0, 0},
};

static int need_name(struct ctl *ctl, const struct ctl_opts *opts, const char *what, const char **name)
{
    if (opts->npositional != 1) {
        ctl_errorf(ctl, "'%s' takes exactly one NAME (see --help)", what);
        return -EINVAL;
    }
    *name = opts->positional[0];
    if ((*name)[0] == '\0' || strlen(*name) > 256) {
        ctl_errorf(ctl, "'%s': bad NAME", what);
        return -EINVAL;
    }
    return 0;
}

static int provider_path(struct ctl *ctl, char *path, size_t cap, const char *name)
{
    snprintf(path, cap, "/admin/v1/providers/");
    if (ctl_path_append_segment(path, cap, name) < 0) {
        ctl_errorf(ctl, "provider name too long");
        return -EINVAL;
    }
    return 0;
}

/* The circuit breaker of each upstream key (channel), as the node's workers see it. */
static int print_channels(struct ctl *ctl, yajl_val p)
{
    static const char *const headers[] = {
        "KEY", "MASKED", "STATE", "FAILURES", "OPENS", "PROBES", "WORKERS_NOT_CLOSED", "LAST_CHANGE"};
    static const char *const fields[] = {"key_index",          "key",        "state", "failures", "opens", "probes",
                                         "workers_not_closed", "last_change"};
    enum { NCOLS = sizeof(headers) / sizeof(headers[0]) };
    static const char *const null_texts[] = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, "never"};
    fprintf(ctl->out, "\nchannels (circuit breakers, one per upstream key):\n");
    return ctl_print_list(ctl, p, "channels", headers, fields, null_texts, NCOLS);
}

static int print_provider(struct ctl *ctl, yajl_val p)
{
    static const char *const keys[] = {"name", "type",     "base_url", "api_keys", "models",
                                       "map",  "priority", "weight",   "region",   "updated_at"};
    enum { N = sizeof(keys) / sizeof(keys[0]) };
    char *values[N] = {0};
    int rc = 0;
    for (size_t i = 0; i < N; i++) {
        const char *null_text = strcmp(keys[i], "region") == 0 ? "any" : "-";
        yajl_val v = ctl_json_get(p, keys[i], NULL);
        if (YAJL_IS_ARRAY(v) && v->u.array.len == 0)
            v = NULL;
        if (YAJL_IS_OBJECT(v) && v->u.object.len == 0)
            v = NULL;
        if ((values[i] = ctl_json_text(v, null_text)) == NULL)
            rc = -ENOMEM;
    }
    if (rc == 0)
        ctl_print_kv(ctl->out, keys, values, N);
    ctl_free_cells(values, N);
    if (rc == 0 && YAJL_IS_ARRAY(ctl_json_get(p, "channels", NULL)))
        rc = print_channels(ctl, p);
    return rc;
}

static int print_provider_list(struct ctl *ctl, yajl_val answer)
{
    static const char *const headers[] = {"NAME",   "TYPE",   "BASE_URL", "MODELS",  "PRIORITY",
                                          "WEIGHT", "REGION", "API_KEYS", "CHANNELS"};
    static const char *const fields[] = {"name",   "type",   "base_url", "models",        "priority",
                                         "weight", "region", "api_keys", "channel_states"};
    enum { NCOLS = sizeof(headers) / sizeof(headers[0]) };
    static const char *const null_texts[] = {NULL, NULL, NULL, NULL, NULL, NULL, "any", NULL, NULL};
    return ctl_print_list(ctl, answer, "providers", headers, fields, null_texts, NCOLS);
}

/* Adds the comma-separated items of list to the open array; returns how many. */
static size_t gen_csv(yajl_gen g, const char *list, int *bad)
{
    size_t n = 0;
    const char *p = list;
    while (*p) {
        size_t len = strcspn(p, ",");
        const char *start = p;
        const char *end = p + len;
        while (start < end && (*start == ' ' || *start == '\t'))
            start++;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (end > start) {
            *bad |= yajl_gen_string(g, (const unsigned char *)start, (size_t)(end - start)) != yajl_gen_status_ok;
            n++;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    return n;
}

static int provider_set(struct ctl *ctl, struct ctl_opts *opts)
{
    const char *name;
    int rc = need_name(ctl, opts, "provider set", &name);
    if (rc < 0)
        return rc;
    const char *type = ctl_opts_get(opts, "type");
    const char *base_url = ctl_opts_get(opts, "base-url");
    const char *priority = ctl_opts_get(opts, "priority");
    const char *weight = ctl_opts_get(opts, "weight");
    const char *region = ctl_opts_get(opts, "region");
    long long priority_value = 0, weight_value = 1;
    if (type == NULL || base_url == NULL || ctl_opts_get(opts, "api-key") == NULL ||
        ctl_opts_get(opts, "models") == NULL) {
        ctl_errorf(ctl, "'provider set' needs --type, --base-url, --api-key and --models (see --help)");
        return -EINVAL;
    }
    if (strcmp(type, "openai") != 0 && strcmp(type, "anthropic") != 0 && strcmp(type, "gemini") != 0) {
        ctl_errorf(ctl, "--type must be openai, anthropic or gemini");
        return -EINVAL;
    }
    if (strncmp(base_url, "http://", 7) != 0 && strncmp(base_url, "https://", 8) != 0) {
        ctl_errorf(ctl, "--base-url must start with http:// or https://");
        return -EINVAL;
    }
    if (priority != NULL && !ctl_parse_int(priority, &priority_value)) {
        ctl_errorf(ctl, "--priority must be an integer");
        return -EINVAL;
    }
    if (weight != NULL && !ctl_parse_int(weight, &weight_value)) {
        ctl_errorf(ctl, "--weight must be an integer");
        return -EINVAL;
    }

    yajl_gen g = ctl_gen_new();
    if (g == NULL)
        return -ENOMEM;
    int bad = 0;
    size_t nkeys = 0, nmodels = 0;
    bad |= yajl_gen_map_open(g) != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, "type") != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, type) != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, "base_url") != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, base_url) != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, "api_keys") != yajl_gen_status_ok;
    bad |= yajl_gen_array_open(g) != yajl_gen_status_ok;
    for (size_t i = 0; i < opts->nfound; i++) {
        if (strcmp(opts->found[i].spec->name, "api-key") == 0 && opts->found[i].value[0] != '\0') {
            bad |= ctl_gen_str(g, opts->found[i].value) != yajl_gen_status_ok;
            nkeys++;
        }
    }
    bad |= yajl_gen_array_close(g) != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, "models") != yajl_gen_status_ok;
    bad |= yajl_gen_array_open(g) != yajl_gen_status_ok;
    for (size_t i = 0; i < opts->nfound; i++)
        if (strcmp(opts->found[i].spec->name, "models") == 0)
            nmodels += gen_csv(g, opts->found[i].value, &bad);
    bad |= yajl_gen_array_close(g) != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, "map") != yajl_gen_status_ok;
    bad |= yajl_gen_map_open(g) != yajl_gen_status_ok;
    for (size_t i = 0; i < opts->nfound && rc == 0; i++) {
        if (strcmp(opts->found[i].spec->name, "map") != 0)
            continue;
        const char *pair = opts->found[i].value;
        const char *eq = strchr(pair, '=');
        if (eq == NULL || eq == pair || eq[1] == '\0') {
            ctl_errorf(ctl, "--map takes ALIAS=UPSTREAM");
            rc = -EINVAL;
            break;
        }
        bad |= yajl_gen_string(g, (const unsigned char *)pair, (size_t)(eq - pair)) != yajl_gen_status_ok;
        bad |= ctl_gen_str(g, eq + 1) != yajl_gen_status_ok;
    }
    bad |= yajl_gen_map_close(g) != yajl_gen_status_ok;
    if (priority != NULL) {
        bad |= ctl_gen_str(g, "priority") != yajl_gen_status_ok;
        bad |= yajl_gen_integer(g, priority_value) != yajl_gen_status_ok;
    }
    if (weight != NULL) {
        bad |= ctl_gen_str(g, "weight") != yajl_gen_status_ok;
        bad |= yajl_gen_integer(g, weight_value) != yajl_gen_status_ok;
    }
    if (region != NULL) {
        bad |= ctl_gen_str(g, "region") != yajl_gen_status_ok;
        bad |= ctl_gen_str(g, region) != yajl_gen_status_ok;
    }
    bad |= yajl_gen_map_close(g) != yajl_gen_status_ok;

    if (rc == 0 && nkeys == 0) {
        ctl_errorf(ctl, "--api-key must not be empty");
        rc = -EINVAL;
    }
    if (rc == 0 && nmodels == 0) {
        ctl_errorf(ctl, "--models must name at least one model");
        rc = -EINVAL;
    }
    if (rc == 0 && bad) {
        ctl_errorf(ctl, "'provider set': an argument is not valid UTF-8");
        rc = -EINVAL;
    }
    char path[512];
    if (rc == 0)
        rc = provider_path(ctl, path, sizeof(path), name);
    yajl_val answer = NULL;
    if (rc == 0) {
        const unsigned char *body;
        size_t body_len;
        yajl_gen_get_buf(g, &body, &body_len);
        rc = ctl_api(ctl, "PUT", path, (const char *)body, body_len, &answer);
    }
    ctl_gen_dispose(g);
    ctl_opts_wipe(opts, "api-key");
    if (rc == 0)
        rc = ctl->json ? ctl_json_print(ctl->out, answer) : print_provider(ctl, answer);
    ctl_json_free(answer);
    return rc;
}

int ctl_provider_main(struct ctl *ctl, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(provider_help, argc < 2 ? ctl->err : ctl->out);
        return argc < 2 ? -EINVAL : 0;
    }
    const char *cmd = argv[1];
    const struct ctl_opt_spec *specs = no_opts;
    const char *help = NULL;
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
        ctl_errorf(ctl, "unknown command 'provider %.64s' (see 'llmrelayctl provider --help')", cmd);
        return -EINVAL;
    }
    char what[64];
    snprintf(what, sizeof(what), "provider %s", cmd);
    struct ctl_opts opts;
    int rc = ctl_opts_parse(ctl, what, specs, argc - 2, argv + 2, &opts);
    if (rc < 0)
        return rc;
    if (opts.help) {
        fputs(help, ctl->out);
        return 0;
    }
    if (strcmp(cmd, "set") == 0)
        return provider_set(ctl, &opts);

    yajl_val answer = NULL;
    char path[512];
    const char *name = NULL;
    if (strcmp(cmd, "list") == 0) {
        if (opts.npositional != 0) {
            ctl_errorf(ctl, "'provider list' takes no arguments");
            return -EINVAL;
        }
        rc = ctl_api(ctl, "GET", "/admin/v1/providers", NULL, 0, &answer);
        if (rc == 0)
            rc = ctl->json ? ctl_json_print(ctl->out, answer) : print_provider_list(ctl, answer);
    } else {
        rc = need_name(ctl, &opts, what, &name);
        if (rc == 0)
            rc = provider_path(ctl, path, sizeof(path), name);
        if (rc == 0)
            rc = ctl_api(ctl, strcmp(cmd, "show") == 0 ? "GET" : "DELETE", path, NULL, 0, &answer);
        if (rc == 0 && ctl->json)
            rc = ctl_json_print(ctl->out, answer);
        else if (rc == 0 && strcmp(cmd, "show") == 0)
            rc = print_provider(ctl, answer);
        else if (rc == 0) {
            char *deleted = ctl_json_text(ctl_json_get(answer, "deleted", NULL), "-");
            if (deleted == NULL)
                rc = -ENOMEM;
            else
                fprintf(ctl->out, "provider %s deleted\n", deleted);
            free(deleted);
        }
    }
    ctl_json_free(answer);
    return rc;
}
