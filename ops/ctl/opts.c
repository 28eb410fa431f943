/*
 * opts.c — parses one llmrelayctl command's own arguments against a table of option
 * specs. Long options only ("--name VALUE" or "--name=VALUE"), "-h"/"--help", and
 * positional arguments; "--" ends the options. Values stay in argv (borrowed), so the
 * values of secret options can be wiped there once used. Messages never echo a value.
 */
#include "ops/ctl/opts.h"

#include <errno.h>
#include <string.h>

static const struct ctl_opt_spec *find_spec(const struct ctl_opt_spec *specs, const char *name, size_t len)
{
    for (const struct ctl_opt_spec *s = specs; s->name != NULL; s++)
        if (strlen(s->name) == len && strncmp(s->name, name, len) == 0)
            return s;
    return NULL;
}

int ctl_opts_parse(struct ctl *ctl, const char *what, const struct ctl_opt_spec *specs, int argc, char **argv,
                   struct ctl_opts *opts)
{
    memset(opts, 0, sizeof(*opts));
    int only_positional = 0;
    for (int i = 0; i < argc; i++) {
        char *arg = argv[i];
        if (!only_positional && (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0)) {
            opts->help = 1;
            continue;
        }
        if (!only_positional && strcmp(arg, "--") == 0) {
            only_positional = 1;
            continue;
        }
        if (only_positional || arg[0] != '-' || arg[1] == '\0') {
            if (opts->npositional == CTL_MAX_POSITIONAL) {
                ctl_errorf(ctl, "too many arguments for '%s'", what);
                return -EINVAL;
            }
            opts->positional[opts->npositional++] = arg;
            continue;
        }
        if (arg[1] != '-') {
            ctl_errorf(ctl, "unknown option '%.64s' for '%s' (see --help)", arg, what);
            return -EINVAL;
        }
        const char *name = arg + 2;
        char *eq = strchr(arg, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const struct ctl_opt_spec *spec = find_spec(specs, name, name_len);
        if (spec == NULL) {
            ctl_errorf(ctl, "unknown option '--%.*s' for '%s' (see --help)", (int)(name_len > 64 ? 64 : name_len), name,
                       what);
            return -EINVAL;
        }
        char *value = NULL;
        if (spec->takes_value) {
            if (eq != NULL) {
                value = eq + 1;
            } else if (i + 1 < argc) {
                value = argv[++i];
            } else {
                ctl_errorf(ctl, "option --%s needs a value", spec->name);
                return -EINVAL;
            }
        } else if (eq != NULL) {
            ctl_errorf(ctl, "option --%s takes no value", spec->name);
            return -EINVAL;
        }
        if (!spec->repeatable) {
            for (size_t k = 0; k < opts->nfound; k++) {
                if (opts->found[k].spec == spec) {
                    ctl_errorf(ctl, "option --%s given more than once", spec->name);
                    return -EINVAL;
                }
            }
        }
        if (opts->nfound == CTL_MAX_FOUND) {
            ctl_errorf(ctl, "too many options for '%s'", what);
            return -EINVAL;
        }
        opts->found[opts->nfound].spec = spec;
        opts->found[opts->nfound].value = value;
        opts->nfound++;
    }
    return 0;
}

const char *ctl_opts_get(const struct ctl_opts *opts, const char *name)
{
    const char *value = NULL;
    for (size_t i = 0; i < opts->nfound; i++)
        if (strcmp(opts->found[i].spec->name, name) == 0)
            value = opts->found[i].value ? opts->found[i].value : "";
    return value;
}

void ctl_opts_wipe(struct ctl_opts *opts, const char *name)
{
    for (size_t i = 0; i < opts->nfound; i++)
        if (strcmp(opts->found[i].spec->name, name) == 0 && opts->found[i].value != NULL)
            explicit_bzero(opts->found[i].value, strlen(opts->found[i].value));
}
