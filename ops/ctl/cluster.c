/*
 * cluster.c — "llmrelayctl cluster status": the cluster's members as the node behind the
 * admin API sees them (GET /admin/v1/cluster, docs/admin-api.md): name, region, version,
 * SWIM status, gossip address, keys owned on the ring and load. --json prints the answer.
 * "llmrelayctl node drain [NAME]": POST /admin/v1/drain ({"node": NAME} when NAME is given),
 * which drains the node behind --admin (or NAME) as SIGTERM does.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ctl/ctl.h"
#include "ops/ctl/http.h"
#include "ops/ctl/json.h"
#include "ops/ctl/opts.h"

static const char cluster_help[] = "usage: llmrelayctl [--admin URL] [--token-file F] [--json] cluster COMMAND\n"
                                   "\n"
                                   "Cluster membership as the node behind --admin sees it.\n"
                                   "\n"
                                   "commands:\n"
                                   "  status    members: name, region, version, status (alive, suspect,\n"
                                   "            dead, left), gossip address, keys owned, load\n";
static const char status_help[] =
    "usage: llmrelayctl cluster status\n\nLists the cluster's members, this node included.\n";

static const struct ctl_opt_spec no_opts[] = {{NULL, 0, 0}};

static int print_members(struct ctl *ctl, yajl_val answer)
{
    static const char *const headers[] = {"NAME", "REGION", "VERSION", "STATUS", "GOSSIP", "KEYS", "LOAD"};
    static const char *const fields[] = {"name", "region", "version", "status", "gossip", "keys_owned", "load"};
    enum { NCOLS = 7 };
    return ctl_print_list(ctl, answer, "members", headers, fields, NULL, NCOLS);
}

int ctl_cluster_main(struct ctl *ctl, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(cluster_help, argc < 2 ? ctl->err : ctl->out);
        return argc < 2 ? -EINVAL : 0;
    }
    if (strcmp(argv[1], "status") != 0) {
        ctl_errorf(ctl, "unknown command 'cluster %.64s' (see 'llmrelayctl cluster --help')", argv[1]);
        return -EINVAL;
    }
    struct ctl_opts opts;
    int rc = ctl_opts_parse(ctl, "cluster status", no_opts, argc - 2, argv + 2, &opts);
    if (rc < 0)
        return rc;
    if (opts.help) {
        fputs(status_help, ctl->out);
        return 0;
    }
    if (opts.npositional != 0) {
        ctl_errorf(ctl, "'cluster status' takes no arguments");
        return -EINVAL;
    }
    yajl_val answer = NULL;
    rc = ctl_api(ctl, "GET", "/admin/v1/cluster", NULL, 0, &answer);
    if (rc == 0)
        rc = ctl->json ? ctl_json_print(ctl->out, answer) : print_members(ctl, answer);
    ctl_json_free(answer);
    return rc;
}

static const char node_help[] = "usage: llmrelayctl [--admin URL] [--token-file F] [--json] node COMMAND\n"
                                "\n"
                                "Operations on one node.\n"
                                "\n"
                                "commands:\n"
                                "  drain [NAME]  drain the node behind --admin (or the member NAME):\n"
                                "                readiness false, stop accepting, finish in-flight\n"
                                "                requests, leave the cluster, exit 0 (as on SIGTERM)\n";
static const char drain_help[] =
    "usage: llmrelayctl node drain [NAME]\n\nDrains the node behind --admin, or the cluster member NAME.\n"
    "The node answers at once; it exits once its in-flight requests have finished.\n";

int ctl_node_main(struct ctl *ctl, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(node_help, argc < 2 ? ctl->err : ctl->out);
        return argc < 2 ? -EINVAL : 0;
    }
    if (strcmp(argv[1], "drain") != 0) {
        ctl_errorf(ctl, "unknown command 'node %.64s' (see 'llmrelayctl node --help')", argv[1]);
        return -EINVAL;
    }
    struct ctl_opts opts;
    int rc = ctl_opts_parse(ctl, "node drain", no_opts, argc - 2, argv + 2, &opts);
    if (rc < 0)
        return rc;
    if (opts.help) {
        fputs(drain_help, ctl->out);
        return 0;
    }
    if (opts.npositional > 1) {
        ctl_errorf(ctl, "'node drain' takes at most one NAME");
        return -EINVAL;
    }
    const char *name = opts.npositional == 1 ? opts.positional[0] : NULL;
    if (name != NULL && name[0] == '\0') {
        ctl_errorf(ctl, "'node drain': NAME is empty");
        return -EINVAL;
    }
    yajl_gen g = ctl_gen_new();
    if (g == NULL)
        return -ENOMEM;
    int bad = yajl_gen_map_open(g) != yajl_gen_status_ok;
    if (name != NULL) {
        bad |= ctl_gen_str(g, "node") != yajl_gen_status_ok;
        bad |= ctl_gen_str(g, name) != yajl_gen_status_ok;
    }
    bad |= yajl_gen_map_close(g) != yajl_gen_status_ok;
    yajl_val answer = NULL;
    if (bad) {
        ctl_errorf(ctl, "'node drain': NAME is not valid UTF-8");
        rc = -EINVAL;
    } else {
        const unsigned char *body;
        size_t len;
        yajl_gen_get_buf(g, &body, &len);
        rc = ctl_api(ctl, "POST", "/admin/v1/drain", (const char *)body, len, &answer);
    }
    ctl_gen_dispose(g);
    if (rc == 0 && ctl->json) {
        rc = ctl_json_print(ctl->out, answer);
    } else if (rc == 0) {
        yajl_val v = ctl_json_get(answer, "node", NULL);
        char *node = YAJL_IS_STRING(v) ? ctl_json_text(v, "-") : NULL;
        if (!YAJL_IS_STRING(v)) {
            ctl_errorf(ctl, "the answer does not name the node");
            rc = -EPROTO;
        } else if (node == NULL) {
            rc = -ENOMEM;
        } else {
            fprintf(ctl->out, "node %s is draining: it stops taking requests, finishes those in flight, then exits\n",
                    node);
        }
        free(node);
    }
    ctl_json_free(answer);
    return rc;
}
