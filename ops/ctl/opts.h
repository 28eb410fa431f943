/*
 * opts.h — command-line options of one llmrelayctl command: "--name VALUE",
 * "--name=VALUE" and boolean "--name", repeatable or not, plus positional arguments.
 */
#ifndef LLMRELAY_OPS_CTL_OPTS_H
#define LLMRELAY_OPS_CTL_OPTS_H

#include <stddef.h>

#include "ops/ctl/ctl.h"

#define CTL_MAX_POSITIONAL 8
#define CTL_MAX_FOUND 256

struct ctl_opt_spec {
    const char *name; /* without the leading "--" */
    int takes_value;
    int repeatable;
};

struct ctl_opts {
    const char *positional[CTL_MAX_POSITIONAL]; /* borrowed from argv */
    size_t npositional;
    struct {
        const struct ctl_opt_spec *spec; /* borrowed from the spec table */
        char *value;                     /* borrowed from argv; NULL for a boolean flag */
    } found[CTL_MAX_FOUND];
    size_t nfound;
    int help; /* -h or --help was given */
};

/* Parses argv[0..argc) (the command's own arguments) against specs (terminated by an
 * entry with name NULL). what names the command in messages ("provider set").
 * Returns 0 or -EINVAL (message printed). */
int ctl_opts_parse(struct ctl *ctl, const char *what, const struct ctl_opt_spec *specs, int argc, char **argv,
                   struct ctl_opts *opts);

/* The last value given for name, or NULL. */
const char *ctl_opts_get(const struct ctl_opts *opts, const char *name);

/* Wipes, in argv, every value given for name (hides secrets from ps once used). */
void ctl_opts_wipe(struct ctl_opts *opts, const char *name);

#endif
