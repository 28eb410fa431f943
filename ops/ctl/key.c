/*
 * key.c — "llmrelayctl key create|list|show|revoke|rotate": relay API keys through
 * /admin/v1/keys (docs/admin-api.md).
 *
 * "create" and "rotate" are the only answers that carry a secret (the new key, shown once); their
 * buffers are wiped like every other answer's. Limits left out are sent as null.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ctl/ctl.h"
#include "ops/ctl/http.h"
#include "ops/ctl/json.h"
#include "ops/ctl/opts.h"

static const char key_help[] =
    "usage: llmrelayctl [--admin URL] [--token-file F] [--json] key COMMAND ...\n"
    "\n"
    "Relay API keys: what customers call the relay with.\n"
    "\n"
    "commands:\n"
    "  create --name N ...   create a key; prints its secret once (see 'key create --help')\n"
    "  list                  list keys\n"
    "  show ID               show a key: limits, spending, what remains\n"
    "  revoke ID             revoke a key (final)\n"
    "  rotate ID [--grace DUR]  new secret; the old one works DUR longer (default 24h)\n";

static const char create_help[] =
    "usage: llmrelayctl key create --name N [--budget-tokens N] [--budget-usd X] [--rpm N]\n"
    "           [--tpm N] [--models M1,M2] [--expires RFC3339]\n"
    "\n"
    "Creates a key and prints its secret: it is shown this once only.\n"
    "\n"
    "  --name N            a label for the key\n"
    "  --budget-tokens N   input + output tokens the key may use in total\n"
    "  --budget-usd X      US dollars the key may spend in total (e.g. 25.50)\n"
    "  --rpm N             requests per minute\n"
    "  --tpm N             tokens per minute\n"
    "  --models M1,M2      the only models the key may use (default: all)\n"
    "  --expires TIME      RFC 3339 time after which the key stops working\n";

static const char list_help[] = "usage: llmrelayctl key list\n\nLists every key (never their secrets).\n";
static const char show_help[] =
    "usage: llmrelayctl key show ID\n\nShows one key's limits, spending and what remains.\n";
static const char revoke_help[] = "usage: llmrelayctl key revoke ID\n\nRevokes a key, for good.\n";
static const char rotate_help[] =
    "usage: llmrelayctl key rotate ID [--grace DUR]\n"
    "\n"
    "Issues a new secret for the key and prints it once. The old secret keeps working for\n"
    "DUR (30m, 24h, 7d; default 24h, at most 30d), then stops. Limits and spending stay.\n";

static const struct ctl_opt_spec no_opts[] = {{NULL, 0, 0}};
static const struct ctl_opt_spec rotate_opts[] = {{"grace", 1, 0}, {NULL, 0, 0}};
static const struct ctl_opt_spec create_opts[] = {
    {"name", 1, 0}, {"budget-tokens", 1, 0}, {"budget-usd", 1, 0}, {"rpm", 1, 0},
    {"tpm", 1, 0},  {"models", 1, 1},        {"expires", 1, 0},    {NULL, 0, 0},
};

/* Text blocks: label, path in the record, what null means. */
struct key_field {
    const char *label;
    const char *outer; /* NULL for a top-level field */
    const char *inner;
    const char *null_text;
};

static const struct key_field show_fields[] = {
    {"id", NULL, "id", "-"},
    {"name", NULL, "name", "-"},
    {"status", NULL, "status", "-"},
    {"prefix", NULL, "prefix", "-"},
    {"created", NULL, "created", "-"},
    {"models", "limits", "models", "all"},
    {"expires", "limits", "expires", "never"},
    {"budget_tokens", "limits", "budget_tokens", "unlimited"},
    {"budget_usd", "limits", "budget_usd", "unlimited"},
    {"rpm", "limits", "rpm", "unlimited"},
    {"tpm", "limits", "tpm", "unlimited"},
    {"spent_requests", "spent", "requests", "0"},
    {"spent_input_tokens", "spent", "input_tokens", "0"},
    {"spent_output_tokens", "spent", "output_tokens", "0"},
    {"spent_usd", "spent", "usd", "0"},
    {"remaining_tokens", "remaining", "tokens", "unlimited"},
    {"remaining_usd", "remaining", "usd", "unlimited"},
    {"previous_key_valid_until", NULL, "previous_key_valid_until", "-"},
};

static yajl_val field_of(yajl_val record, const struct key_field *f)
{
    return f->outer ? ctl_json_get(record, f->outer, f->inner, NULL) : ctl_json_get(record, f->inner, NULL);
}

static int print_fields(struct ctl *ctl, yajl_val record, const struct key_field *fields, size_t n)
{
    const char *labels[32];
    char *values[32] = {0};
    int rc = 0;
    if (n > 32)
        n = 32;
    for (size_t i = 0; i < n; i++) {
        labels[i] = fields[i].label;
        if ((values[i] = ctl_json_text(field_of(record, &fields[i]), fields[i].null_text)) == NULL)
            rc = -ENOMEM;
    }
    if (rc == 0)
        ctl_print_kv(ctl->out, labels, values, n);
    ctl_free_cells(values, n);
    return rc;
}

static int print_key(struct ctl *ctl, yajl_val record)
{
    return print_fields(ctl, record, show_fields, sizeof(show_fields) / sizeof(show_fields[0]));
}

static int print_key_list(struct ctl *ctl, yajl_val answer)
{
    static const char *const headers[] = {"ID",       "NAME",         "STATUS",        "PREFIX", "CREATED",   "EXPIRES",
                                          "REQUESTS", "INPUT_TOKENS", "OUTPUT_TOKENS", "USD",    "BUDGET_USD"};
    static const struct key_field cols[] = {
        {"", NULL, "id", "-"},
        {"", NULL, "name", "-"},
        {"", NULL, "status", "-"},
        {"", NULL, "prefix", "-"},
        {"", NULL, "created", "-"},
        {"", "limits", "expires", "never"},
        {"", "spent", "requests", "0"},
        {"", "spent", "input_tokens", "0"},
        {"", "spent", "output_tokens", "0"},
        {"", "spent", "usd", "0"},
        {"", "limits", "budget_usd", "-"},
    };
    enum { NCOLS = sizeof(headers) / sizeof(headers[0]) };
    yajl_val list = ctl_json_get(answer, "keys", NULL);
    if (!YAJL_IS_ARRAY(list)) {
        ctl_errorf(ctl, "the answer has no \"keys\" array");
        return -EPROTO;
    }
    size_t nrows = list->u.array.len;
    char **cells = calloc(nrows * NCOLS + 1, sizeof(*cells));
    if (cells == NULL)
        return -ENOMEM;
    int rc = 0;
    for (size_t r = 0; r < nrows && rc == 0; r++)
        for (size_t c = 0; c < NCOLS; c++)
            if ((cells[r * NCOLS + c] =
                     ctl_json_text(field_of(list->u.array.values[r], &cols[c]), cols[c].null_text)) == NULL)
                rc = -ENOMEM;
    if (rc == 0)
        ctl_print_table(ctl->out, headers, NCOLS, cells, nrows);
    ctl_free_cells(cells, nrows * NCOLS);
    free(cells);
    return rc;
}

static int print_created(struct ctl *ctl, yajl_val answer)
{
    static const struct key_field fields[] = {
        {"id", NULL, "id", "-"},
        {"key", NULL, "key", "-"},
        {"name", NULL, "name", "-"},
    };
    if (!YAJL_IS_STRING(ctl_json_get(answer, "key", NULL))) {
        ctl_errorf(ctl, "the answer carries no key");
        return -EPROTO;
    }
    int rc = print_fields(ctl, answer, fields, sizeof(fields) / sizeof(fields[0]));
    if (rc == 0)
        fputs("Save this key now: it will not be shown again.\n", ctl->out);
    return rc;
}

/* Adds "field": <integer> or null. */
static int gen_int_opt(struct ctl *ctl, yajl_gen g, const struct ctl_opts *opts, const char *flag, const char *field,
                       int *bad)
{
    const char *text = ctl_opts_get(opts, flag);
    long long value;
    *bad |= ctl_gen_str(g, field) != yajl_gen_status_ok;
    if (text == NULL) {
        *bad |= yajl_gen_null(g) != yajl_gen_status_ok;
        return 0;
    }
    if (!ctl_parse_int(text, &value)) {
        ctl_errorf(ctl, "--%s must be an integer", flag);
        return -EINVAL;
    }
    *bad |= yajl_gen_integer(g, value) != yajl_gen_status_ok;
    return 0;
}

static int key_create(struct ctl *ctl, const struct ctl_opts *opts)
{
    const char *name = ctl_opts_get(opts, "name");
    const char *usd = ctl_opts_get(opts, "budget-usd");
    const char *expires = ctl_opts_get(opts, "expires");
    if (opts->npositional != 0) {
        ctl_errorf(ctl, "'key create' takes no positional arguments (see --help)");
        return -EINVAL;
    }
    if (name == NULL || name[0] == '\0') {
        ctl_errorf(ctl, "'key create' needs --name (see --help)");
        return -EINVAL;
    }
    if (usd != NULL && !ctl_is_json_number(usd)) {
        ctl_errorf(ctl, "--budget-usd must be a number such as 25 or 12.50");
        return -EINVAL;
    }
    yajl_gen g = ctl_gen_new();
    if (g == NULL)
        return -ENOMEM;
    int bad = 0, rc = 0;
    bad |= yajl_gen_map_open(g) != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, "name") != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, name) != yajl_gen_status_ok;
    bad |= ctl_gen_str(g, "models") != yajl_gen_status_ok;
    if (ctl_opts_get(opts, "models") == NULL) {
        bad |= yajl_gen_null(g) != yajl_gen_status_ok;
    } else {
        size_t nmodels = 0;
        bad |= yajl_gen_array_open(g) != yajl_gen_status_ok;
        for (size_t i = 0; i < opts->nfound; i++) {
            if (strcmp(opts->found[i].spec->name, "models") != 0)
                continue;
            const char *p = opts->found[i].value;
            while (*p) {
                size_t len = strcspn(p, ",");
                const char *start = p, *end = p + len;
                while (start < end && (*start == ' ' || *start == '\t'))
                    start++;
                while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
                    end--;
                if (end > start) {
                    bad |=
                        yajl_gen_string(g, (const unsigned char *)start, (size_t)(end - start)) != yajl_gen_status_ok;
                    nmodels++;
                }
                p += len;
                if (*p == ',')
                    p++;
            }
        }
        bad |= yajl_gen_array_close(g) != yajl_gen_status_ok;
        if (nmodels == 0) {
            ctl_errorf(ctl, "--models must name at least one model");
            rc = -EINVAL;
        }
    }
    bad |= ctl_gen_str(g, "expires") != yajl_gen_status_ok;
    bad |= (expires ? ctl_gen_str(g, expires) : yajl_gen_null(g)) != yajl_gen_status_ok;
    if (rc == 0)
        rc = gen_int_opt(ctl, g, opts, "budget-tokens", "budget_tokens", &bad);
    bad |= ctl_gen_str(g, "budget_usd") != yajl_gen_status_ok;
    bad |= (usd ? yajl_gen_number(g, usd, strlen(usd)) : yajl_gen_null(g)) != yajl_gen_status_ok;
    if (rc == 0)
        rc = gen_int_opt(ctl, g, opts, "rpm", "rpm", &bad);
    if (rc == 0)
        rc = gen_int_opt(ctl, g, opts, "tpm", "tpm", &bad);
    bad |= yajl_gen_map_close(g) != yajl_gen_status_ok;
    if (rc == 0 && bad) {
        ctl_errorf(ctl, "'key create': an argument is not valid UTF-8");
        rc = -EINVAL;
    }
    yajl_val answer = NULL;
    if (rc == 0) {
        const unsigned char *body;
        size_t body_len;
        yajl_gen_get_buf(g, &body, &body_len);
        rc = ctl_api(ctl, "POST", "/admin/v1/keys", (const char *)body, body_len, &answer);
    }
    ctl_gen_dispose(g);
    if (rc == 0)
        rc = ctl->json ? ctl_json_print(ctl->out, answer) : print_created(ctl, answer);
    ctl_json_free(answer);
    return rc;
}

/* path: "/admin/v1/keys/ID" (room for "/rotate" is left by the caller). */
static int key_rotate(struct ctl *ctl, const struct ctl_opts *opts, char *path)
{
    const char *grace = ctl_opts_get(opts, "grace");
    if (grace != NULL) {
        size_t i = 0;
        while (grace[i] >= '0' && grace[i] <= '9')
            i++;
        const char *unit = grace + i;
        if (i == 0 || (strcmp(unit, "ms") != 0 && strcmp(unit, "s") != 0 && strcmp(unit, "m") != 0 &&
                       strcmp(unit, "h") != 0 && strcmp(unit, "d") != 0)) {
            ctl_errorf(ctl, "--grace must be a duration such as 30m, 24h or 7d");
            return -EINVAL;
        }
    }
    strcat(path, "/rotate");
    yajl_gen g = ctl_gen_new();
    if (g == NULL)
        return -ENOMEM;
    int bad = yajl_gen_map_open(g) != yajl_gen_status_ok;
    if (grace != NULL) {
        bad |= ctl_gen_str(g, "grace") != yajl_gen_status_ok;
        bad |= ctl_gen_str(g, grace) != yajl_gen_status_ok;
    }
    bad |= yajl_gen_map_close(g) != yajl_gen_status_ok;
    yajl_val answer = NULL;
    int rc = bad ? -ENOMEM : 0;
    if (rc == 0) {
        const unsigned char *body;
        size_t len;
        yajl_gen_get_buf(g, &body, &len);
        rc = ctl_api(ctl, "POST", path, (const char *)body, len, &answer);
    }
    ctl_gen_dispose(g);
    if (rc == 0 && ctl->json) {
        rc = ctl_json_print(ctl->out, answer);
    } else if (rc == 0) {
        static const struct key_field fields[] = {
            {"id", NULL, "id", "-"},
            {"key", NULL, "key", "-"},
            {"name", NULL, "name", "-"},
            {"previous_key_valid_until", NULL, "previous_key_valid_until", "-"},
        };
        if (!YAJL_IS_STRING(ctl_json_get(answer, "key", NULL))) {
            ctl_errorf(ctl, "the answer carries no key");
            rc = -EPROTO;
        } else {
            rc = print_fields(ctl, answer, fields, sizeof(fields) / sizeof(fields[0]));
            if (rc == 0)
                fputs("Save this key now: it will not be shown again.\n", ctl->out);
        }
    }
    ctl_json_free(answer);
    return rc;
}

int ctl_key_main(struct ctl *ctl, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(key_help, argc < 2 ? ctl->err : ctl->out);
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
    } else if (strcmp(cmd, "show") == 0) {
        help = show_help;
    } else if (strcmp(cmd, "revoke") == 0) {
        help = revoke_help;
    } else if (strcmp(cmd, "rotate") == 0) {
        specs = rotate_opts;
        help = rotate_help;
    } else {
        ctl_errorf(ctl, "unknown command 'key %.64s' (see 'llmrelayctl key --help')", cmd);
        return -EINVAL;
    }
    char what[64];
    snprintf(what, sizeof(what), "key %s", cmd);
    struct ctl_opts opts;
    int rc = ctl_opts_parse(ctl, what, specs, argc - 2, argv + 2, &opts);
    if (rc < 0)
        return rc;
    if (opts.help) {
        fputs(help, ctl->out);
        return 0;
    }
    if (strcmp(cmd, "create") == 0)
        return key_create(ctl, &opts);

    yajl_val answer = NULL;
    if (strcmp(cmd, "list") == 0) {
        if (opts.npositional != 0) {
            ctl_errorf(ctl, "'key list' takes no arguments");
            return -EINVAL;
        }
        rc = ctl_api(ctl, "GET", "/admin/v1/keys", NULL, 0, &answer);
        if (rc == 0)
            rc = ctl->json ? ctl_json_print(ctl->out, answer) : print_key_list(ctl, answer);
        ctl_json_free(answer);
        return rc;
    }
    if (opts.npositional != 1 || opts.positional[0][0] == '\0') {
        ctl_errorf(ctl, "'%s' takes exactly one key ID (see --help)", what);
        return -EINVAL;
    }
    char path[512];
    snprintf(path, sizeof(path), "/admin/v1/keys/");
    if (ctl_path_append_segment(path, sizeof(path) - 16, opts.positional[0]) < 0) {
        ctl_errorf(ctl, "key ID too long");
        return -EINVAL;
    }
    if (strcmp(cmd, "revoke") == 0)
        strcat(path, "/revoke");
    if (strcmp(cmd, "rotate") == 0)
        return key_rotate(ctl, &opts, path);
    rc = ctl_api(ctl, strcmp(cmd, "show") == 0 ? "GET" : "POST", path, NULL, 0, &answer);
    if (rc == 0)
        rc = ctl->json ? ctl_json_print(ctl->out, answer) : print_key(ctl, answer);
    ctl_json_free(answer);
    return rc;
}
